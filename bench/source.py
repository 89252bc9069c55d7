"""The server code a run measures: a snapshot of ``server/``, ``sql/`` and ``static/`` taken when
the run starts, so that every server process of the run (and the pgbench script, and the
migrations) is the same code even while the work tree changes under it, and a description of
that code (the commit, the files that differ from it, a digest of the snapshot). Also the same
parts of an earlier git revision (``--baseline REV``), for a side-by-side run.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
PARTS = ("server", "sql", "static")


@dataclass(frozen=True, slots=True)
class Source:
    root: Path  # run ``python -m server`` with this as its working directory

    @property
    def queries(self) -> Path:
        return self.root / "sql" / "queries.sql"


def snapshot(into: Path) -> Source:
    root = into / "src"
    for part in PARTS:
        shutil.copytree(
            REPO_ROOT / part, root / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    return Source(root)


def snapshot_revision(into: Path, revision: str) -> Source:
    """``server/``, ``sql/`` and ``static/`` as they were at git ``revision`` (``git archive``)."""
    root = into / "baseline-src"
    try:
        done = subprocess.run(
            ["git", "archive", "--format=tar", revision, "--", *PARTS],
            cwd=REPO_ROOT,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"git archive {revision}: {exc}") from exc
    if done.returncode != 0:
        raise RuntimeError(f"git archive {revision}: {done.stderr.decode(errors='replace')}")
    root.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(root, filter="data")
    return Source(root)


def describe_revision(revision: str) -> dict[str, Any]:
    """The commit a revision names, and its subject."""
    commit = _git("rev-parse", "--verify", f"{revision}^{{commit}}")
    subject = _git("log", "-1", "--format=%s", revision) if commit else None
    return {"revision": revision, "commit": commit, "subject": subject}


def describe(source: Source) -> dict[str, Any]:
    """The commit checked out, the measured files that differ from it, and a digest of them."""
    digest = hashlib.sha256()
    for path in sorted(p for p in source.root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(source.root)).encode())
        digest.update(path.read_bytes())
    return {
        "commit": (_git("rev-parse", "HEAD") or "").strip() or None,
        "uncommitted_changes": [
            line[3:] for line in (_git("status", "--porcelain", "--", *PARTS) or "").splitlines()
        ],
        "sha256": digest.hexdigest()[:16],
    }


def _git(*args: str) -> str | None:
    """A read-only git query; None when git or the repository is not there."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.rstrip() if done.returncode == 0 else None
