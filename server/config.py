"""Settings: the only reader of ``os.environ``. Built once, then passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from server.models import ON_RUNNING_POLICIES


class SettingsError(ValueError):
    """A setting in the environment has an invalid value."""


@dataclass(frozen=True, slots=True)
class Settings:
    # Where the data lives. None: an embedded PostgreSQL under data_dir.
    database_url: str | None = None
    data_dir: Path = Path(".data")
    embedded_port: int = 54329
    # HTTP
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    public_url: str | None = None
    # When set, /metrics and /openapi.json answer only `Authorization: Bearer <OPS_TOKEN>`.
    ops_token: str | None = field(default=None, repr=False)
    log_level: str = "info"
    # auto: text when stderr is a terminal (a person reads it), JSON otherwise (a collector does)
    log_format: str = "auto"
    # Generation
    generator: str = "demo"
    demo_deltas: int = 20
    demo_delta_ms: int = 50
    openai_base_url: str = "http://127.0.0.1:11434/v1"
    openai_api_key: str | None = field(default=None, repr=False)
    openai_model: str = "llama3.2"
    openai_system_prompt: str = "You are a helpful assistant."
    openai_connect_timeout_seconds: float = 10.0
    openai_first_token_seconds: float = 60.0
    openai_idle_seconds: float = 60.0
    openai_total_seconds: float = 600.0
    openai_retries: int = 1
    # At most this many earlier messages go upstream, as whole turns (10: the last 5 turns).
    history_messages: int = 10
    # What a generation request does when an answer of its project is running, unless it says
    # (on_running): concurrent, reject, enqueue or interrupt
    on_running: str = "concurrent"
    # How often each worker looks for queued answers whose turn came without a NOTIFY reaching it
    queue_poll_seconds: float = 5.0
    # Streams and the event log
    ping_seconds: float = 15.0
    retry_ms: int = 2000
    send_timeout_seconds: float = 30.0
    flush_interval_ms: int = 20
    flush_delay_ms: int = 50
    lease_seconds: float = 30.0
    shutdown_grace_seconds: float = 10.0
    max_stream_seconds: float = 300.0
    event_retention_hours: float = 168.0
    # Input limits
    max_message_chars: int = 32_000
    max_body_bytes: int = 256 * 1024
    # POST /api/chat: the AI SDK's transport sends the whole conversation every time
    chat_max_body_bytes: int = 8 * 1024 * 1024
    max_url_bytes: int = 16 * 1024
    max_header_bytes: int = 32 * 1024
    max_running_per_user: int = 10
    rate_per_minute: int = 600
    rate_burst: int = 60
    max_streams_per_worker: int = 10_000
    # per worker process, like the rate (in memory: a refusal costs no query)
    max_streams_per_user: int = 100
    cors_origins: str = ""
    # Database
    pool_min_size: int = 2
    pool_max_size: int = 10
    token_cache_seconds: float = 5.0
    # Failed token lookups (each a database query anybody can cause), per worker process
    auth_failures_per_minute: int = 30
    auth_failures_burst: int = 20
    auth_failures_worker_per_minute: int = 600

    @property
    def base_url(self) -> str:
        """Where people open the service (sign-in links): ``PUBLIC_URL``, else
        ``http://HOST:PORT``; a wildcard ``HOST`` (0.0.0.0, ::) is no address to open, so the
        loopback stands in for it."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address, as a URL writes it
        return f"http://{host}:{self.port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from ``env`` (default: ``os.environ``); unset ones keep defaults."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, str(f.type), raw)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        positive = (
            "max_url_bytes",
            "max_header_bytes",
            "max_running_per_user",
            "rate_per_minute",
            "rate_burst",
            "max_streams_per_worker",
            "max_streams_per_user",
            "port",
            "workers",
            "demo_deltas",
            "max_message_chars",
            "max_body_bytes",
            "chat_max_body_bytes",
            "pool_min_size",
            "pool_max_size",
            "flush_interval_ms",
            "flush_delay_ms",
            "auth_failures_per_minute",
            "auth_failures_burst",
            "auth_failures_worker_per_minute",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise SettingsError(f"{name.upper()} must be at least 1")
        if self.demo_delta_ms < 0:
            raise SettingsError("DEMO_DELTA_MS must not be negative")
        if self.ping_seconds <= 0 or self.lease_seconds <= 0:
            raise SettingsError("PING_SECONDS and LEASE_SECONDS must be positive")
        if self.pool_min_size > self.pool_max_size:
            raise SettingsError("POOL_MIN_SIZE must not exceed POOL_MAX_SIZE")
        timeouts = (
            "openai_connect_timeout_seconds",
            "openai_first_token_seconds",
            "openai_idle_seconds",
            "openai_total_seconds",
            "max_stream_seconds",
            "send_timeout_seconds",
            "shutdown_grace_seconds",
            "queue_poll_seconds",
        )
        for name in timeouts:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name.upper()} must be positive")
        if self.openai_retries < 0 or self.history_messages < 0 or self.event_retention_hours < 0:
            raise SettingsError(
                "OPENAI_RETRIES, HISTORY_MESSAGES and EVENT_RETENTION_HOURS must not be negative"
            )
        if self.log_format not in ("auto", "json", "text"):
            raise SettingsError("LOG_FORMAT must be 'auto', 'json' or 'text'")
        if self.generator not in ("demo", "openai"):
            raise SettingsError("GENERATOR must be 'demo' or 'openai'")
        if self.on_running not in ON_RUNNING_POLICIES:
            raise SettingsError(f"ON_RUNNING must be one of {', '.join(ON_RUNNING_POLICIES)}")


def _parse(name: str, kind: str, raw: str) -> object:
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("Path"):
            return Path(raw)
    except ValueError:
        raise SettingsError(f"{name.upper()}={raw!r} is not a valid {kind.split()[0]}") from None
    return raw
