"""`diga bench kernels`: loop-style vs reference vs CPU fast path for each fused op, with floors."""

from __future__ import annotations

from pathlib import Path

import typer

from .bench import bench_app
from .common import write_report


@bench_app.command("kernels")
def bench_kernels(
    shapes: str = typer.Option("paper,embedded", help="comma-separated shape sets: paper, embedded, tiny"),
    ops: str = typer.Option("all", help="comma-separated ops to measure (default all): consensus_select, class_mix, "
                            "choose_classes, centroid_sums, symmetric_distillation_loss, upsample_argmax"),
    post_size: str = typer.Option("512x1024", "--post-size", help="HxW of the post-processing (upsample + argmax) "
                                  "measurement; logits at 1/8"),
    repeats: int = typer.Option(5, min=1, help="timed repeats per variant (interleaved; medians reported)"),
    threads: int = typer.Option(0, min=0, help="torch and numba threads (0: leave the defaults)"),
    json_path: Path | None = typer.Option(None, "--json", help="write the results here as JSON"),
    markdown_path: Path | None = typer.Option(None, "--markdown", help="write the markdown table here"),
) -> None:
    """Time each kernel op three ways and against its memory/FLOP floor; prints a markdown table."""
    import torch

    from ..bench import kernels as benchmark
    from ..bench.latency import cpu_isa_flags
    from ..errors import DigaError
    from ..progress import log
    from ..results import env_info

    names = [s.strip() for s in shapes.split(",") if s.strip()]
    chosen_ops = benchmark.OPS if ops.strip() == "all" else tuple(o.strip() for o in ops.split(",") if o.strip())
    bad_ops = [o for o in chosen_ops if o not in benchmark.OPS]
    if not chosen_ops or bad_ops:
        raise DigaError(f"unknown op(s) {bad_ops or ops!r}: use any of {', '.join(benchmark.OPS)} (or all)")
    unknown = [n for n in names if n not in benchmark.SHAPES]
    if not names or unknown:
        raise DigaError(f"unknown shape set(s) {unknown or shapes!r}: use any of {', '.join(benchmark.SHAPES)}")
    if threads:
        import numba

        torch.set_num_threads(threads)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        post_hw = tuple(int(v) for v in post_size.lower().split("x"))
    except ValueError:
        post_hw = ()
    if len(post_hw) != 2 or min(post_hw) < 8:
        raise DigaError(f"--post-size {post_size!r} is not HxW with both sides >= 8, e.g. 512x1024")
    result = benchmark.run(names, repeats=repeats, progress=log.info, ops=chosen_ops, post_size=post_hw)
    result["env"] = {**env_info(), "isa_flags": cpu_isa_flags()}
    table = benchmark.markdown(result)
    typer.echo(table)
    write_report(result, table, json_path, markdown_path)
