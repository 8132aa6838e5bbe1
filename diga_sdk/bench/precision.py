"""mIoU of every reduced-precision deployment path against fp32 on a labelled set (the accuracy half
of the latency table): onnxruntime fp32 / INT8 / FP16, OpenVINO fp32 / bf16 / INT8, PyTorch bf16."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..progress import log
from .latency import ALL_VARIANTS, machine_info, prepare_variants

PRECISION_PATHS = ("torch-fp32", "torch-bf16", "torch-bf16-emulated", "onnxruntime-fp32", "onnxruntime-int8", "onnxruntime-fp16",
                   "openvino-fp32", "openvino-bf16", "openvino-int8")


def run_precision(checkpoint: str | Path, val: str, *, calib: str, calib_images: int = 64, limit: int | None = None,
                  work: Path | None = None, threads: int | None = None,
                  skip: list[str] | None = None) -> dict[str, Any]:
    """{rows: [{path, runtime, miou, delta_vs_fp32}], ...}: each path evaluated on `val` with its runtime."""
    from ..export.accuracy import runtime_miou
    from ..export.quantize import convert_fp16
    from ..models.checkpoint import checkpoint_hash
    from ..runtime.cache import cache_dir
    from ..runtime.runtimes import open_runtime

    base = work or cache_dir() / "bench"
    variants = {v.name: v for v in prepare_variants(checkpoint, base, calib=calib, calib_images=calib_images,
                                                    include=[p for p in PRECISION_PATHS if p in ALL_VARIANTS])}
    fp32 = Path(variants["onnxruntime-fp32"].path)
    fp16 = base / checkpoint_hash(checkpoint) / "fp16.onnx"
    if not fp16.is_file():
        convert_fp16(fp32, fp16)
    rows: list[dict[str, Any]] = []
    for name in PRECISION_PATHS:
        if skip and name in skip:
            continue
        if name == "onnxruntime-fp16":
            path, runtime, precision = str(fp16), "onnxruntime", None
        elif name == "torch-bf16-emulated":
            path, runtime, precision = str(checkpoint), "torch", "bf16-emulated"
        else:
            v = variants[name]
            path, runtime, precision = v.path, v.runtime, v.precision
        rt = open_runtime(path, runtime, precision=precision, threads=threads)
        res = runtime_miou(rt, val, limit=limit)
        rows.append({"path": name, "runtime": rt.label, "miou": res["miou"], "pixel_accuracy": res["pixel_accuracy"],
                     "per_class": res["per_class"], "images": res["images"]})
        log.info("%s (%s): mIoU %.2f", name, rt.label, res["miou"])
        del rt
    ref = next(r["miou"] for r in rows if r["path"] == "torch-fp32")
    for r in rows:
        r["delta_vs_fp32"] = r["miou"] - ref
    return {"checkpoint": str(checkpoint), "val": val, "calib": calib, "calib_images": calib_images, "rows": rows,
            "machine": machine_info()}


def precision_table(result: dict[str, Any]) -> str:
    lines = ["| path | runtime (precision) | mIoU | change vs PyTorch fp32 |", "|---|---|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['path']} | {r['runtime']} | {r['miou']:.2f} | {r['delta_vs_fp32']:+.2f} |")
    return "\n".join(lines) + f"\n\n{result['val']}, {result['rows'][0]['images']} images; INT8 calibrated on " \
        f"{result['calib_images']} images of {result['calib']}.\n"
