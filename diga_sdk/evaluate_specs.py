"""Evaluate a checkpoint on dataset specs and format the per-class table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from .data.datasets import open_dataset
from .errors import DigaError
from .evaluate import evaluate
from .models.checkpoint import load_checkpoint
from .models.registry import channels_last
from .progress import console, progress_bar


def evaluate_specs(checkpoint: str | Path, specs: Sequence[str], subset: int | None = None,
                   device: str = "cpu", scales: Sequence[float] = (1.0,)) -> dict[str, Any]:
    """{spec: summary} for each labelled dataset spec; `scales` max-fuses multi-scale logits."""
    if subset not in (None, 19, 16, 13):
        raise DigaError(f"subset {subset} is not a protocol; use 19, 16 or 13 classes")
    model, _ = load_checkpoint(checkpoint, device)
    channels_last(model)
    out: dict[str, Any] = {}
    for spec in specs:
        ds = open_dataset(spec)
        with progress_bar(f"eval {spec}", len(ds)) as bar:
            cm = evaluate(model, ds, device=device, progress=lambda done, _n: bar.set(done), scales=scales)
        out[spec] = cm.summary(subset if subset in (16, 13) else None)
    return out


def print_per_class(title: str, summary: dict[str, Any]) -> None:
    table = Table(title=f"{title}: mIoU {summary['miou']:.2f}, pixel acc {summary['pixel_accuracy']:.2f}")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, v in summary["per_class"].items():
        table.add_row(name, "-" if v is None else f"{v:.1f}")
    console.print(table)
