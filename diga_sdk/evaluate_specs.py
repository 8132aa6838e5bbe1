"""Evaluate a checkpoint on dataset specs and format the per-class table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data.datasets import open_dataset
from .errors import DigaError
from .evaluate import evaluate
from .models.checkpoint import load_checkpoint
from .models.registry import channels_last
from .progress import progress_bar


def evaluate_specs(checkpoint: str | Path, specs: Sequence[str], subset: int | None = None,
                   device: str = "cpu", scales: Sequence[float] = (1.0,)) -> dict[str, Any]:
    """{spec: summary} for each labelled dataset spec; `scales` max-fuses multi-scale logits."""
    if subset not in (None, 19, 16, 13):
        raise DigaError(f"subset {subset} is not a protocol; use 19, 16 or 13 classes")
    model, _ = load_checkpoint(checkpoint, device, fold=True)
    channels_last(model)
    out: dict[str, Any] = {}
    for spec in specs:
        ds = open_dataset(spec)
        with progress_bar(f"eval {spec}", len(ds)) as bar:
            cm = evaluate(model, ds, device=device, progress=lambda done, _n: bar.set(done), scales=scales)
        out[spec] = cm.summary(subset if subset in (16, 13) else None)
    return out


def print_eval_columns(results: dict[str, dict[str, Any]], title: str = "IoU (%)") -> None:
    """One table for several evaluated sets: a row per class, then mIoU and pixel accuracy; a column per set."""
    from .results import print_eval_table

    specs = list(results)
    classes = list(next(iter(results.values()))["per_class"]) if results else []
    rows = [(name, {spec: results[spec]["per_class"].get(name) for spec in specs}) for name in classes]
    rows.append(("mIoU", {spec: results[spec]["miou"] for spec in specs}))
    rows.append(("pixel acc", {spec: results[spec]["pixel_accuracy"] for spec in specs}))
    print_eval_table(rows, specs, title, first="class")
