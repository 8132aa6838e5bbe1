"""`diga bench kernels`: loop-style vs reference vs CPU fast path for each fused op, with floors."""

from __future__ import annotations

from pathlib import Path

import typer

from .bench import bench_app
from .common import write_report


@bench_app.command("kernels")
def bench_kernels(
    shapes: str = typer.Option("paper,embedded", help="comma-separated shape sets: paper, embedded, tiny"),
    repeats: int = typer.Option(5, min=1, help="timed repeats per variant (interleaved; medians reported)"),
    threads: int = typer.Option(0, min=0, help="torch and numba threads (0: leave the defaults)"),
    json_path: Path | None = typer.Option(None, "--json", help="write the results here as JSON"),
    markdown_path: Path | None = typer.Option(None, "--markdown", help="write the markdown table here"),
) -> None:
    """Time each kernel op three ways and against its memory/FLOP floor; prints a markdown table."""
    import torch

    from ..bench import kernels as benchmark
    from ..errors import DigaError
    from ..progress import log
    from ..results import env_info

    names = [s.strip() for s in shapes.split(",") if s.strip()]
    unknown = [n for n in names if n not in benchmark.SHAPES]
    if not names or unknown:
        raise DigaError(f"unknown shape set(s) {unknown or shapes!r}: use any of {', '.join(benchmark.SHAPES)}")
    if threads:
        import numba

        torch.set_num_threads(threads)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    result = benchmark.run(names, repeats=repeats, progress=log.info)
    result["env"] = env_info()
    table = benchmark.markdown(result)
    typer.echo(table)
    write_report(result, table, json_path, markdown_path)
