"""`diga bench ...`: measurements that write JSON + a markdown table (kernels, latency, serving, steps)."""

from __future__ import annotations

import typer

from . import app

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: each writes JSON (--json) and a markdown table.")
app.add_typer(bench_app, name="bench")
