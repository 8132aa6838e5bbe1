"""The one exception type for errors a user can cause; the CLI prints it as one line."""

from __future__ import annotations


class DigaError(Exception):
    """A user-facing error: the message names the thing that is wrong and how to fix it."""
