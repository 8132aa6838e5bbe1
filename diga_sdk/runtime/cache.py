"""Where diga keeps derived files (ONNX exports of checkpoints, recorded runtime choices)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$DIGA_CACHE_DIR, else ~/.cache/diga."""
    return Path(os.environ.get("DIGA_CACHE_DIR") or Path.home() / ".cache" / "diga")
