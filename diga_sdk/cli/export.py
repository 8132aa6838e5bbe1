"""`diga export ...` (checkpoint -> ONNX / INT8 / FP16 / OpenVINO / TensorRT) and `diga export check` (parity)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import DigaError
from ..progress import console
from . import app
from .common import dumps, parse_size, write_json

export_app = typer.Typer(invoke_without_command=True, no_args_is_help=False,
                         help="Export a checkpoint for deployment (runs the parity check), or `check` an export.")
app.add_typer(export_app, name="export")


@export_app.callback()
def export_cmd(
    ctx: typer.Context,
    model: Path | None = typer.Option(None, "--model", help="checkpoint (.safetensors)"),
    fmt: str = typer.Option("onnx", "--format", help="onnx | onnx-int8 | onnx-fp16 | openvino | openvino-int8 | tensorrt"),
    out: Path | None = typer.Option(None, "--out", help="destination (.onnx, .xml, .engine)"),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (>= 17)"),
    dynamic: bool = typer.Option(True, "--dynamic/--static", help="dynamic batch, height and width"),
    embed_pre: bool = typer.Option(False, "--embed-pre", help="uint8 RGB NHWC input, normalisation inside the graph"),
    embed_post: bool = typer.Option(False, "--embed-post", help="add a uint8 label-map output (argmax inside the graph)"),
    parity_data: str | None = typer.Option(None, "--parity-data", help="dataset spec of the parity images "
                                           "(default: from the data the checkpoint was trained on)"),
    parity_images: int = typer.Option(8, "--parity-images", min=1),
    parity_size: str | None = typer.Option(None, "--parity-size", help="resize parity images to HxW (e.g. 128x256)"),
    no_parity: bool = typer.Option(False, "--no-parity", help="skip the parity check (not recommended)"),
    calib: str | None = typer.Option(None, "--calib", help="target-domain images for INT8 calibration "
                                     "(default: the target the checkpoint was adapted to)"),
    calib_images: int = typer.Option(64, "--calib-images", min=1),
    calib_method: str = typer.Option("minmax", "--calib-method", help="minmax | percentile | entropy (onnx-int8)"),
    val: str | None = typer.Option(None, "--val", help="labelled spec: report the mIoU change of the export"),
    val_limit: int | None = typer.Option(None, "--val-limit", help="evaluate only the first N validation images"),
    precision: str | None = typer.Option(None, "--precision", help="TensorRT: fp32 | fp16 (default) | int8"),
    min_shape: str | None = typer.Option(None, "--min", help="TensorRT profile min, NCHW (default 1x3x256x512)"),
    opt_shape: str | None = typer.Option(None, "--opt", help="TensorRT profile opt (default 1x3x512x1024)"),
    max_shape: str | None = typer.Option(None, "--max", help="TensorRT profile max (default 4x3x1024x2048)"),
    timing_cache: Path | None = typer.Option(None, "--timing-cache", help="TensorRT timing cache file (read + updated)"),
    json_path: Path | None = typer.Option(None, "--json", help="write the export report (parity, mIoU) here"),
) -> None:
    """Export --model to --format at --out; the parity check runs after every export."""
    if ctx.invoked_subcommand is not None:
        return
    if model is None or out is None:
        raise DigaError("diga export needs --model CKPT and --out PATH (see `diga export --help`)")
    from ..export.pipeline import ExportParityError
    from ..segmenter import Segmenter

    profile = None
    if fmt == "tensorrt":
        from ..runtime.tensorrt import build_profile

        profile = build_profile(min_shape, opt_shape, max_shape)
    elif any(v is not None for v in (min_shape, opt_shape, max_shape)):
        raise DigaError("--min/--opt/--max set a TensorRT optimisation profile; they need --format tensorrt")
    try:
        report = Segmenter(model).export(
            fmt, out, calib=calib, parity=not no_parity, parity_data=parity_data, opset=opset, dynamic=dynamic,
            embed_pre=embed_pre, embed_post=embed_post, parity_images=parity_images,
            parity_size=parse_size(parity_size) if parity_size else None, calib_images=calib_images,
            calib_method=calib_method, val=val, val_limit=val_limit, precision=precision, trt_profile=profile,
            timing_cache=timing_cache).to_dict()
    except ExportParityError as exc:
        write_json(json_path, exc.report)
        raise
    write_json(json_path, report)
    acc = report.get("accuracy") or {}
    if "change" in acc:
        c = acc["change"]
        console.print(f"mIoU on {val}: fp32 {c['reference_miou']:.2f} -> {c['runtime']} {c['miou']:.2f} "
                      f"({c['delta']:+.2f})", highlight=False)
    elif "fp32" in acc:
        console.print(f"mIoU on {val}: {acc['fp32']['miou']:.2f}", highlight=False)
    console.print(f"wrote {out} ({fmt}, {report['seconds']} s)", highlight=False)


@export_app.command("check")
def check_cmd(
    model: Path = typer.Option(..., "--model", help="the source checkpoint (.safetensors)"),
    exported: Path = typer.Option(..., "--exported", help="the exported .onnx (or OpenVINO .xml)"),
    data: str = typer.Option("synthetic:target@val", "--data", help="dataset spec of real images"),
    images: int = typer.Option(8, "--images", min=1),
    size: str | None = typer.Option(None, "--size", help="resize the images to HxW"),
    runtime: str = typer.Option("onnxruntime", "--runtime", help="onnxruntime | openvino"),
    max_abs_diff: float = typer.Option(1e-4, "--max-abs-diff"),
    min_agreement: float = typer.Option(99.9, "--min-agreement", help="percent of pixels with the same argmax"),
    json_path: Path | None = typer.Option(None, "--json"),
) -> None:
    """Parity of an export with PyTorch on real images: max |logit diff| and argmax agreement; exit 1 on failure."""
    from ..export.parity import check_parity, format_parity

    report = check_parity(model, exported, data, n_images=images, size=parse_size(size) if size else None,
                          runtime=runtime, max_abs_diff=max_abs_diff, min_agreement=min_agreement)
    write_json(json_path, report)
    if json_path is None:
        console.print(dumps({k: v for k, v in report.items() if k != "per_image"}), highlight=False)
    console.print(format_parity(report), highlight=False)
    if not report["passed"]:
        raise DigaError(f"{exported} fails parity with {model}; re-export it (see the numbers above)")
