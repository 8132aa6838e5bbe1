"""Small parsing helpers shared by the CLI modules."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from ..errors import DigaError
from ..io import atomic_write_json


def parse_size(text: str) -> tuple[int, int]:
    """'256x512' -> (256, 512) as (H, W)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise DigaError(f"bad size {text!r}; write HxW, e.g. 256x512") from None
    if h <= 0 or w <= 0:
        raise DigaError(f"bad size {text!r}; both sides must be positive")
    return h, w


def above(low: float, high: float | None = None) -> Callable[[float | None], float | None]:
    """A typer callback for an option in (low, high]: typer's own ranges only express closed bounds."""

    def check(value: float | None) -> float | None:
        if value is not None and (value <= low or (high is not None and value > high)):
            bound = f"({low}, {high}]" if high is not None else f"greater than {low}"
            raise typer.BadParameter(f"{value} is not in {bound}")
        return value

    return check


def write_json(path: Path | None, obj: Any) -> None:
    if path is not None:
        atomic_write_json(path, obj)


def write_report(result: Any, table: str, json_path: Path | None, md_path: Path | None) -> None:
    """A measuring command's two outputs: the results as JSON and the markdown table, each if asked for."""
    from ..io import atomic_write_bytes

    write_json(json_path, result)
    if md_path:
        atomic_write_bytes(md_path, table.encode())


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
