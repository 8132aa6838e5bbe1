"""`diga bench latency`: every runtime path for one model, interleaved; JSON, markdown table and PNG plot."""

from __future__ import annotations

from pathlib import Path

import typer

from ..progress import console
from .bench import bench_app
from .common import parse_size, write_report


@bench_app.command("latency")
def latency_cmd(
    model: Path = typer.Option(..., "--model", help="checkpoint (.safetensors)"),
    sizes: str = typer.Option("512x1024", "--sizes", help="comma-separated HxW, e.g. 256x512,512x1024"),
    batch: str = typer.Option("1", "--batch", help="comma-separated batch sizes, e.g. 1,4"),
    runs: int = typer.Option(20, "--runs", min=1, help="timed runs per path (interleaved)"),
    warmup: int = typer.Option(3, "--warmup", min=0, help="untimed runs per path and shape"),
    threads: int | None = typer.Option(None, "--threads", min=1, help="threads per runtime (default: the library's)"),
    paths: str | None = typer.Option(None, "--paths", help="subset of paths, comma-separated (default: all)"),
    calib: str = typer.Option("synthetic:target@train", "--calib", help="target images for the INT8 calibrations"),
    calib_images: int = typer.Option(32, "--calib-images", min=1),
    engine: Path | None = typer.Option(None, "--engine", help="a TensorRT engine to measure too (GPU machines)"),
    work: Path | None = typer.Option(None, "--work", help="folder for the exported files (default: the cache)"),
    val: str | None = typer.Option(None, "--val", help="labelled spec: first check the mIoU change of every "
                                   "INT8/FP16/bf16 path not checked yet (what `auto` and the accepted column read)"),
    val_limit: int | None = typer.Option(None, "--val-limit", help="check on the first N images of --val only"),
    max_miou_drop: float = typer.Option(0.5, "--max-miou-drop", min=0.0,
                                        help="a reduced precision is accepted when it loses at most this mIoU"),
    json_path: Path | None = typer.Option(None, "--json", help="write the results here"),
    md_path: Path | None = typer.Option(None, "--md", help="write the markdown table here"),
    plot_path: Path | None = typer.Option(None, "--plot", help="write a PNG plot here"),
) -> None:
    """PyTorch eager fp32 / bf16, onnxruntime fp32 / INT8, OpenVINO fp32 / bf16 / INT8, auto (+ CUDA / TensorRT),
    with the model's GFLOPs, the machine's measured fp32 peak, each path's share of it and which paths are
    accepted (fp32, or a reduced precision whose checked mIoU loss is within --max-miou-drop)."""
    from ..bench.latency import markdown_table, plot, run_latency

    size_list = [parse_size(s) for s in sizes.split(",") if s.strip()]
    try:
        batches = [int(b) for b in batch.split(",") if b.strip()]
    except ValueError:
        raise typer.BadParameter(f"{batch!r} is not a comma-separated list of integers", param_hint="'--batch'") from None
    if not batches or min(batches) < 1:
        raise typer.BadParameter(f"{batch!r}: every batch size must be at least 1", param_hint="'--batch'")
    result = run_latency(model, sizes=size_list, batches=batches, runs=runs, warmup=warmup, threads=threads,
                         calib=calib, calib_images=calib_images, work=work, engine=engine, val=val,
                         val_limit=val_limit, max_miou_drop=max_miou_drop,
                         include=[p.strip() for p in paths.split(",")] if paths else None)
    table = markdown_table(result)
    console.print(table, highlight=False, markup=False)
    write_report(result, table, json_path, md_path)
    if plot_path:
        plot(result, plot_path)


@bench_app.command("precision")
def precision_cmd(
    model: Path = typer.Option(..., "--model", help="checkpoint (.safetensors)"),
    val: str = typer.Option("synthetic:target@val", "--val", help="labelled dataset spec"),
    calib: str = typer.Option("synthetic:target@train", "--calib", help="target images for the INT8 calibrations"),
    calib_images: int = typer.Option(64, "--calib-images", min=1),
    limit: int | None = typer.Option(None, "--limit", help="evaluate only the first N images"),
    threads: int | None = typer.Option(None, "--threads"),
    work: Path | None = typer.Option(None, "--work", help="folder for the exported files (default: the cache)"),
    skip: str | None = typer.Option(None, "--skip", help="paths to leave out, comma-separated (e.g. torch-bf16 on "
                                    "CPUs without bf16 units, where autocast runs reference kernels)"),
    json_path: Path | None = typer.Option(None, "--json"),
    md_path: Path | None = typer.Option(None, "--md"),
) -> None:
    """mIoU of every deployment precision (fp32, bf16, fp16, INT8) against PyTorch fp32 on --val."""
    from ..bench.precision import precision_table, run_precision

    result = run_precision(model, val, calib=calib, calib_images=calib_images, limit=limit, work=work, threads=threads,
                           skip=[p.strip() for p in skip.split(",")] if skip else None)
    table = precision_table(result)
    console.print(table, highlight=False, markup=False)
    write_report(result, table, json_path, md_path)
