"""`diga adapt ...` commands (registered on the root app when implemented)."""

from __future__ import annotations

from . import app  # noqa: F401
