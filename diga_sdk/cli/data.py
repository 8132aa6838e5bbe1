"""`diga data ...`: make the embedded synthetic benchmark."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import DigaError
from ..progress import console, progress_bar
from . import app
from .common import parse_size

data_app = typer.Typer(no_args_is_help=True, help="Datasets: the embedded synthetic driving benchmark.")
app.add_typer(data_app, name="data")


@data_app.command("synthetic")
def synthetic(
    out: Path = typer.Option(..., "--out", help="folder to write (must not exist or be empty)"),
    seed: int = typer.Option(0, help="random seed; the same seed gives the same files"),
    size: str = typer.Option("256x512", help="image size HxW"),
    counts: str = typer.Option("", help="images per split as source-train,source-val,target-train,target-val"),
    workers: int = typer.Option(0, help="processes (0: up to 4)"),
) -> None:
    """Write the synthetic source (GTA5 layout) and target (Cityscapes layout) benchmark."""
    from ..data.synthetic import DEFAULT_COUNTS, generate_benchmark

    split_counts = None
    if counts:
        try:
            values = [int(v) for v in counts.split(",")]
        except ValueError:
            raise DigaError(f"bad --counts {counts!r}; give four integers like 400,100,400,100") from None
        if len(values) != 4 or min(values) < 1:
            raise DigaError(f"bad --counts {counts!r}; give four positive integers like 400,100,400,100")
        split_counts = dict(zip(DEFAULT_COUNTS, values, strict=True))
    total = sum((split_counts or DEFAULT_COUNTS).values())
    with progress_bar("generating", total) as bar:
        root = generate_benchmark(out, seed, parse_size(size), split_counts, workers or None,
                                  progress=lambda done, _n: bar.set(done))
    console.print(f"benchmark written to {root}")
