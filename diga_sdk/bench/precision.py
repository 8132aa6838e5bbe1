"""mIoU of every reduced-precision deployment path against fp32 on a labelled set (the accuracy half
of the latency table): onnxruntime fp32 / INT8 / FP16, OpenVINO fp32 / bf16 / INT8, PyTorch bf16."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..progress import log
from ..runtime.checked import AccuracyCheck, artefact_sha256, read_checks, record_check
from .latency import ALL_VARIANTS, Variant, machine_info, prepare_variants

PRECISION_PATHS = ("torch-fp32", "torch-bf16", "torch-bf16-emulated", "onnxruntime-fp32", "onnxruntime-int8", "onnxruntime-fp16",
                   "openvino-fp32", "openvino-bf16", "openvino-int8")
# the exported reduced-precision paths whose checks `runtime="auto"` reads (torch autocast is not an export)
CHECKED_PATHS = ("onnxruntime-int8", "onnxruntime-fp16", "openvino-int8", "openvino-bf16")


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
    ref_row = next(r for r in rows if r["path"] == "torch-fp32")
    ref = ref_row["miou"]
    source = checkpoint_hash(checkpoint)
    for r in rows:
        r["delta_vs_fp32"] = r["miou"] - ref
        if r["path"] in CHECKED_PATHS:  # the artefact now carries its measured change: `auto` may take it
            f = fp16 if r["path"] == "onnxruntime-fp16" else Path(variants[r["path"]].path)
            v = Variant(r["path"], str(f), "onnxruntime" if r["path"].startswith("onnxruntime") else "openvino",
                        "bf16" if r["path"] == "openvino-bf16" else None)
            record_check(f, _check(v, source, ref_row, r, val, "diga bench precision"))
    return {"checkpoint": str(checkpoint), "val": val, "calib": calib, "calib_images": calib_images, "rows": rows,
            "machine": machine_info()}


def _check(v: Variant, source: str, ref: dict[str, Any], res: dict[str, Any], val: str,
           measured_by: str) -> AccuracyCheck:
    return AccuracyCheck(path_name=v.name, runtime=v.runtime, precision=v.precision,
                         artefact_sha256=artefact_sha256(v.path), source_checkpoint_hash=source,
                         reference=ref["runtime"], reference_miou=ref["miou"], miou=res["miou"],
                         miou_change=res["miou"] - ref["miou"], val=val, images=res["images"], measured_by=measured_by)


def check_variants(checkpoint: str | Path, variants: list[Variant], val: str, *, limit: int | None = None,
                   threads: int | None = None, measured_by: str = "diga bench latency") -> list[AccuracyCheck]:
    """Measure and record the mIoU change against PyTorch fp32 of every reduced-precision path among
    `variants` that carries no valid check yet; returns the new checks."""
    from ..export.accuracy import runtime_miou
    from ..models.checkpoint import checkpoint_hash
    from ..runtime.runtimes import open_runtime

    todo = [v for v in variants if v.name in CHECKED_PATHS and v.name not in read_checks(v.path)]
    if not todo:
        return []
    ref = runtime_miou(open_runtime(checkpoint, "torch", threads=threads), val, limit=limit)
    source, out = checkpoint_hash(checkpoint), []
    for v in todo:
        res = runtime_miou(open_runtime(v.path, v.runtime, precision=v.precision, threads=threads), val, limit=limit)
        check = _check(v, source, ref, res, val, measured_by)
        record_check(v.path, check)
        log.info("%s: mIoU %.2f (%+.2f against %s)", v.name, res["miou"], check.miou_change, ref["runtime"])
        out.append(check)
    return out


def precision_table(result: dict[str, Any]) -> str:
    lines = ["| path | runtime (precision) | mIoU | change vs PyTorch fp32 |", "|---|---|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['path']} | {r['runtime']} | {r['miou']:.2f} | {r['delta_vs_fp32']:+.2f} |")
    return "\n".join(lines) + f"\n\n{result['val']}, {result['rows'][0]['images']} images; INT8 calibrated on " \
        f"{result['calib_images']} images of {result['calib']}.\n"
