"""`export_model`: checkpoint -> ONNX (checked, parity-tested) -> the requested format, with a JSON report.

Every format goes through the fp32 ONNX first and its parity check against PyTorch; an export that
fails parity raises and leaves nothing at the destination. Reduced precisions (INT8, FP16) report
their mIoU change against fp32 on a validation set.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import DigaError
from ..models.checkpoint import read_meta
from ..progress import log
from ..runtime.metadata import onnx_props
from . import EXPORT_FORMATS
from .images import dataset_images

DEFAULT_PARITY_DATA = "synthetic:target@val"
DEFAULT_CALIB_DATA = "synthetic:target@train"
_SUFFIX = {"onnx": ".onnx", "onnx-int8": ".onnx", "onnx-fp16": ".onnx", "openvino": ".xml", "openvino-int8": ".xml",
           "tensorrt": (".engine", ".plan", ".trt")}


def default_data_specs(checkpoint: str | Path) -> tuple[str, str]:
    """(parity images, calibration images) for a checkpoint, derived from the data it was trained on: the
    target's val split (else its train split, else the source) for parity, the target's train split
    (else the source) for INT8 calibration. The embedded benchmark only for a model trained on it, or
    (with a warning) for a checkpoint that records no training data."""
    data = {k: v for k, v in read_meta(checkpoint).data.items() if v}
    if not data:
        log.warning("%s records no training data: parity and calibration use the embedded benchmark; pass "
                    "--parity-data / --calib with your target images", checkpoint)
        return DEFAULT_PARITY_DATA, DEFAULT_CALIB_DATA
    if all(v.startswith("synthetic") for v in data.values()):
        return DEFAULT_PARITY_DATA, DEFAULT_CALIB_DATA
    parity = data.get("target_val") or data.get("target") or data["source"]
    calib = data.get("target") or data["source"]
    return parity, calib


def check_format_args(fmt: str, out: Path, precision: str | None = None) -> None:
    """Validate the format and destination before any work (and fail at once where TensorRT cannot run)."""
    if fmt not in EXPORT_FORMATS:
        raise DigaError(f"unsupported export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    suffixes = _SUFFIX[fmt] if isinstance(_SUFFIX[fmt], tuple) else (_SUFFIX[fmt],)
    if out.suffix.lower() not in suffixes:
        raise DigaError(f"--out {out} does not fit --format {fmt}; use a path ending in {' or '.join(suffixes)}")
    if out.is_dir():
        raise DigaError(f"--out {out} is a directory; give a file path")
    if fmt == "tensorrt":
        from ..runtime.tensorrt import ENGINE_PRECISIONS, require_tensorrt

        if precision is not None and precision not in ENGINE_PRECISIONS:
            raise DigaError(f"TensorRT precision {precision!r} unsupported; use one of {', '.join(ENGINE_PRECISIONS)}")
        require_tensorrt()
    elif precision is not None:
        raise DigaError(f"--precision only applies to --format tensorrt; for {fmt} the format fixes the precision "
                        "(use onnx-int8 / onnx-fp16 / openvino-int8)")


def export_model(checkpoint: str | Path, fmt: str, out: str | Path, *, opset: int = 18, dynamic: bool = True,
                 embed_pre: bool = False, embed_post: bool = False, parity_data: str | None = DEFAULT_PARITY_DATA,
                 parity_images: int = 8, parity_size: tuple[int, int] | None = None,
                 calib: str = DEFAULT_CALIB_DATA, calib_images: int = 64, calib_method: str = "minmax",
                 val: str | None = None, val_limit: int | None = None, precision: str | None = None,
                 trt_profile: dict[str, Any] | None = None, timing_cache: str | Path | None = None) -> dict[str, Any]:
    """Export `checkpoint` to `fmt` at `out`; returns the report (also for the CLI's JSON)."""
    from ..runtime.onnx_export import export_onnx_model, save_onnx
    from .parity import check_parity, format_parity

    out = Path(out)
    check_format_args(fmt, out, precision)
    meta = read_meta(checkpoint)  # a missing or corrupt checkpoint fails here, before any tracing
    t0 = time.perf_counter()
    report: dict[str, Any] = {"format": fmt, "checkpoint": str(checkpoint), "out": str(out), "model": meta.model_name}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp_dir:
        tmp = Path(tmp_dir)
        fp32 = tmp / "fp32.onnx"
        log.info("exporting %s to ONNX (opset %d, dynamic=%s)", meta.model_name, opset, dynamic)
        proto, report["onnx"] = export_onnx_model(checkpoint, opset=opset, dynamic=dynamic,
                                                  embed_pre=embed_pre, embed_post=embed_post)
        save_onnx(proto, fp32)
        del proto
        if parity_data:
            par = check_parity(checkpoint, fp32, parity_data, n_images=parity_images, size=parity_size)
            report["parity"] = par
            log.info(format_parity(par))
            if not par["passed"]:
                raise ExportParityError(format_parity(par) + f"; nothing was written to {out}", report)
        else:
            log.warning("parity check skipped (--no-parity): the export is unverified")
            report["parity"] = None
        props = onnx_props(fp32)
        final = _convert(fmt, fp32, tmp, meta, props, report, calib=calib, calib_images=calib_images,
                         calib_method=calib_method, precision=precision, trt_profile=trt_profile,
                         timing_cache=timing_cache)
        if val:
            report["accuracy"] = _accuracy(fp32, final, fmt, val, val_limit)
        _move_into_place(final, out)
    if val and fmt in CHECKED_FORMATS and "change" in report.get("accuracy", {}):
        report["accuracy_sidecar"] = str(_record_accuracy(out, fmt, report["accuracy"], val, props))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


class ExportParityError(DigaError):
    """Parity failed; carries the report so the CLI can still write it as JSON."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def _convert(fmt: str, fp32: Path, tmp: Path, meta: Any, props: dict[str, str], report: dict[str, Any], *,
             calib: str, calib_images: int, calib_method: str, precision: str | None,
             trt_profile: dict[str, Any] | None, timing_cache: str | Path | None) -> Path:
    """Produce the requested format inside `tmp`; returns the main file's path."""
    if fmt == "onnx":
        return fp32
    if fmt == "onnx-fp16":
        from .quantize import convert_fp16

        return convert_fp16(fp32, tmp / "fp16.onnx")
    if fmt == "onnx-int8":
        return _int8_onnx(fp32, tmp / "int8.onnx", meta, report, calib, calib_images, calib_method)
    if fmt in ("openvino", "openvino-int8"):
        from .openvino import convert_to_ir, quantize_ir_int8

        ir = convert_to_ir(fp32, tmp / "model.xml", props)
        if fmt == "openvino":
            return ir
        samples = dataset_images(calib, calib_images, tuple(meta.input_size))
        report["calibration"] = {"data": calib, "images": len(samples), "method": "nncf-mixed"}
        log.info("NNCF INT8 calibration on %d images of %s", len(samples), calib)
        return quantize_ir_int8(ir, tmp / "int8" / "model.xml", [s.image for s in samples], _preprocessor(meta))
    # tensorrt
    from ..runtime.tensorrt import build_engine, trt_major
    from ..runtime.tensorrt import require_tensorrt as _req

    trt = _req()
    precision = precision or "fp16"
    onnx_for_trt = fp32
    if precision == "int8":
        onnx_for_trt = _int8_onnx(fp32, tmp / "int8-sym.onnx", meta, report, calib, calib_images, calib_method,
                                  symmetric=True)
    elif precision == "fp16" and trt_major(trt) >= 11:
        from .quantize import convert_fp16

        onnx_for_trt = convert_fp16(fp32, tmp / "fp16.onnx")
    report["tensorrt"] = {"version": str(trt.__version__), "precision": precision}
    return build_engine(onnx_for_trt, tmp / "model.engine", onnx_props(onnx_for_trt), precision=precision,
                        profile=trt_profile, timing_cache=timing_cache)


def _int8_onnx(fp32: Path, dest: Path, meta: Any, report: dict[str, Any], calib: str, n: int, method: str,
               symmetric: bool = False) -> Path:
    from .quantize import quantize_int8

    samples = dataset_images(calib, n, tuple(meta.input_size))
    report["calibration"] = {"data": calib, "images": len(samples), "method": method, "symmetric": symmetric,
                             "size": list(meta.input_size)}
    return quantize_int8(fp32, dest, [s.image for s in samples], _preprocessor(meta), method=method,
                         symmetric_activations=symmetric)


def _preprocessor(meta: Any):
    import numpy as np

    scale = (1.0 / (255.0 * np.asarray(meta.std, np.float32))).reshape(1, 3, 1, 1)
    shift = (-np.asarray(meta.mean, np.float32) / np.asarray(meta.std, np.float32)).reshape(1, 3, 1, 1)

    def pre(batch: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2).astype(np.float32) * scale + shift)

    return pre


def _accuracy(fp32: Path, final: Path, fmt: str, val: str, limit: int | None) -> dict[str, Any]:
    """mIoU of the fp32 ONNX and of the exported model on `val` (for fp32 formats: the export only)."""
    from ..runtime.runtimes import open_runtime
    from .accuracy import miou_change, runtime_miou

    if fmt == "tensorrt":
        return {"skipped": "TensorRT accuracy is measured with `diga bench latency`/`diga eval` on the GPU"}
    ref = runtime_miou(open_runtime(fp32, "onnxruntime"), val, limit=limit)
    runtime = "openvino" if fmt.startswith("openvino") else "onnxruntime"
    if fmt == "onnx":
        return {"fp32": ref}
    other = runtime_miou(open_runtime(final, runtime), val, limit=limit)
    change = miou_change(ref, other)
    log.info("mIoU on %s: fp32 %.2f -> %s %.2f (%+.2f)", val, ref["miou"], other["runtime"], other["miou"],
             change["delta"])
    return {"fp32": ref, "exported": other, "change": change}


CHECKED_FORMATS = {"onnx-int8": ("onnxruntime-int8", "onnxruntime"), "onnx-fp16": ("onnxruntime-fp16", "onnxruntime"),
                   "openvino-int8": ("openvino-int8", "openvino")}


def _record_accuracy(out: Path, fmt: str, acc: dict[str, Any], val: str, props: dict[str, str]) -> Path:
    """The exported file's sidecar: its measured mIoU change, which `runtime="auto"` reads."""
    from ..runtime.checked import AccuracyCheck, artefact_sha256, record_check
    from ..runtime.metadata import HASH_KEY

    name, runtime = CHECKED_FORMATS[fmt]
    ch = acc["change"]
    return record_check(out, AccuracyCheck(
        path_name=name, runtime=runtime, artefact_sha256=artefact_sha256(out), source_checkpoint_hash=props[HASH_KEY],
        reference=ch["reference"], reference_miou=ch["reference_miou"], miou=ch["miou"], miou_change=ch["delta"],
        val=val, images=acc["exported"]["images"], measured_by="diga export"))


def _move_into_place(final: Path, out: Path) -> None:
    """Move the finished file (and an IR's .bin) to `out` (same filesystem: a rename)."""
    if final.suffix == ".xml":
        shutil.move(str(final.with_suffix(".bin")), out.with_suffix(".bin"))
    elif final.suffix == ".engine":
        from ..runtime.tensorrt import sidecar_path

        shutil.move(str(sidecar_path(final)), sidecar_path(out))
    shutil.move(str(final), out)
