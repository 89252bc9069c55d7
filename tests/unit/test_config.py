"""Settings: parsing, validation, and the README documenting every one of them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from server.config import Settings, SettingsError


def test_defaults_and_parsing() -> None:
    settings = Settings.from_env({"PORT": "9000", "LEASE_SECONDS": "2.5", "DATA_DIR": "/x"})
    assert settings.port == 9000
    assert settings.lease_seconds == 2.5
    assert settings.data_dir == Path("/x")
    assert settings.database_url is None
    assert Settings.from_env({}) == Settings()


@pytest.mark.parametrize(
    "env",
    [
        {"PORT": "abc"},
        {"PORT": "0"},
        {"GENERATOR": "gpt"},
        {"LEASE_SECONDS": "-1"},
        {"POOL_MIN_SIZE": "20", "POOL_MAX_SIZE": "5"},
        {"LOG_FORMAT": "xml"},
        {"OPENAI_TOTAL_SECONDS": "0"},
    ],
)
def test_invalid_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env(env)


def test_readme_documents_every_setting(repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text()
    for field in dataclasses.fields(Settings):
        assert f"`{field.name.upper()}`" in readme, f"{field.name.upper()} is not in the README"


@pytest.mark.parametrize(
    ("env", "base"),
    [
        ({}, "http://127.0.0.1:8000"),
        ({"HOST": "10.0.0.2", "PORT": "9000"}, "http://10.0.0.2:9000"),
        ({"HOST": "0.0.0.0"}, "http://127.0.0.1:8000"),
        ({"HOST": "::"}, "http://[::1]:8000"),
        ({"PUBLIC_URL": "https://chat.example.com/", "PORT": "9000"}, "https://chat.example.com"),
    ],
)
def test_base_url_is_where_people_open_the_service(env: dict[str, str], base: str) -> None:
    assert Settings.from_env(env).base_url == base


def test_ops_token_is_never_shown() -> None:
    settings = Settings.from_env({"OPS_TOKEN": "s3cret-ops"})
    assert settings.ops_token == "s3cret-ops"
    assert "s3cret-ops" not in repr(settings)
