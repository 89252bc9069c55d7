"""Where the service's files are: the SQL (``sql/``) and the demo page (``static/``).

They live at the top of the repository, beside the package. A wheel carries them inside the
package instead (``server/sql``, ``server/static``: pyproject.toml maps the two directories into
it), because an installed package has no repository around it. A checkout, and an editable
install of it, have no ``server/sql``: there the top-level directories are the ones.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def _files(name: str) -> Path:
    inside = PACKAGE_DIR / name
    return inside if inside.is_dir() else PACKAGE_DIR.parent / name


SQL_DIR = _files("sql")
STATIC_DIR = _files("static")
