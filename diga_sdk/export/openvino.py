"""ONNX -> OpenVINO IR (.xml + .bin) with the diga metadata in rt_info, and INT8 through NNCF
(post-training quantization calibrated on target-domain images)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DigaError
from ..runtime.metadata import GRAPH_KEY, RT_SECTION, GraphInfo, read_rt_info
from ..runtime.signal_stack import preserved_signal_stack


def _write_rt_info(model: Any, props: dict[str, str]) -> None:
    model.set_rt_info(json.dumps(props), [RT_SECTION, "props"])
    for key in ("model_name", "input_size", "mean", "std"):  # readable copies for OpenVINO tools
        if key in props:
            model.set_rt_info(props[key], [RT_SECTION, key])


def convert_to_ir(onnx_path: str | Path, out_xml: str | Path, props: dict[str, str]) -> Path:
    """Convert an ONNX file to an IR beside `out_xml` (weights kept in fp32: precision is chosen at run time)."""
    import openvino as ov

    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as exc:
        raise DigaError(f"OpenVINO cannot convert {onnx_path}: {str(exc).splitlines()[0]}") from None
    _write_rt_info(model, props)
    return save_ir(model, out_xml)


def save_ir(model: Any, out_xml: str | Path) -> Path:
    """ov.save_model into a temporary folder, then move .xml and .bin into place (no half-written IR)."""
    import openvino as ov

    out = Path(out_xml)
    if out.suffix.lower() != ".xml":
        raise DigaError(f"an OpenVINO IR path must end in .xml, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.") as tmp:
        tmp_xml = Path(tmp) / out.name
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        shutil.move(str(tmp_xml.with_suffix(".bin")), out.with_suffix(".bin"))
        shutil.move(str(tmp_xml), out)
    return out


def quantize_ir_int8(ir_xml: str | Path, out_xml: str | Path, calib_images: list[np.ndarray],
                     preprocess: Any) -> Path:
    """NNCF post-training INT8 quantization of an IR, calibrated on `calib_images` (uint8 HWC RGB)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(ir_xml))
    props = read_rt_info(model)
    graph = GraphInfo.model_validate_json(props[GRAPH_KEY])
    name = graph.input_name

    def transform(img: np.ndarray) -> dict[str, np.ndarray]:
        batch = img[None]
        return {name: np.ascontiguousarray(batch) if graph.embed_pre else preprocess(batch)}

    dataset = nncf.Dataset(calib_images, transform)
    try:
        with preserved_signal_stack():  # NNCF compiles the model to collect statistics (runtime/signal_stack.py)
            qmodel = nncf.quantize(model, dataset, subset_size=len(calib_images), preset=nncf.QuantizationPreset.MIXED,
                                   model_type=None)
    except Exception as exc:
        raise DigaError(f"NNCF INT8 quantization of {ir_xml} failed: {str(exc).splitlines()[0]}") from None
    props["diga.graph"] = graph.model_copy(update={"precision": "int8"}).model_dump_json()
    _write_rt_info(qmodel, props)
    return save_ir(qmodel, out_xml)
