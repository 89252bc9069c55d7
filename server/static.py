"""The demo page's files, and the security headers they are served with."""

from __future__ import annotations

from server.resources import STATIC_DIR

__all__ = ["STATIC_DIR"]
