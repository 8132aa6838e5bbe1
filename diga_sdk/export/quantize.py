"""Reduced-precision ONNX: INT8 with onnxruntime's static quantizer (QDQ, per-channel weights, calibrated
on target-domain images) and FP16 (weights and activations converted, fp32 input/output kept)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DigaError
from ..progress import log
from ..runtime.metadata import GRAPH_KEY, GraphInfo

CALIB_METHODS = ("minmax", "percentile", "entropy")


def _set_precision(proto: Any, precision: str) -> None:
    """Rewrite the graph-info metadata to the new precision (and keep every other key)."""
    for prop in proto.metadata_props:
        if prop.key == GRAPH_KEY:
            prop.value = GraphInfo.model_validate_json(prop.value).model_copy(update={"precision": precision}).model_dump_json()


def quantize_int8(fp32_onnx: str | Path, out: str | Path, calib_images: list[np.ndarray],
                  preprocess: Callable[[np.ndarray], np.ndarray], *, method: str = "minmax",
                  symmetric_activations: bool = False) -> Path:
    """QDQ INT8 model calibrated on `calib_images` (uint8 HWC RGB, one at a time through `preprocess`).

    Weights: int8 per output channel. Activations: uint8 asymmetric for CPUs, or int8 symmetric
    (`symmetric_activations`) for TensorRT, which only takes zero-point-0 Q/DQ."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIB_METHODS:
        raise DigaError(f"calibration method {method!r} unknown; choose one of {', '.join(CALIB_METHODS)}")
    if not calib_images:
        raise DigaError("INT8 calibration needs at least one image; pass --calib SPEC with target-domain images")
    model = onnx.load(str(fp32_onnx))
    graph = GraphInfo.model_validate_json({p.key: p.value for p in model.metadata_props}[GRAPH_KEY])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calib_images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            img = next(self.items, None)
            if img is None:
                return None
            batch = img[None]
            return {graph.input_name: np.ascontiguousarray(batch) if graph.embed_pre else preprocess(batch)}

    calib = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
             "entropy": CalibrationMethod.Entropy}[method]
    with tempfile.TemporaryDirectory(prefix="diga-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        qdq = Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
        log.info("calibrating INT8 on %d images (%s)", len(calib_images), method)
        quantize_static(str(pre), str(qdq), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=calib,
                        # exclude the final argmax/labels path and keep the logits' upsample in float
                        op_types_to_quantize=["Conv", "MatMul", "Add", "Mul", "Concat", "GlobalAveragePool",
                                              "MaxPool", "Relu"],
                        extra_options={"ActivationSymmetric": symmetric_activations, "WeightSymmetric": True,
                                       "CalibTensorRangeSymmetric": symmetric_activations,
                                       "CalibPercentile": 99.999})
        qmodel = onnx.load(str(qdq))
    del qmodel.metadata_props[:]
    qmodel.metadata_props.extend(model.metadata_props)
    _set_precision(qmodel, "int8")
    from ..runtime.onnx_export import check_onnx, save_onnx

    check_onnx(qmodel)
    return save_onnx(qmodel, out)


def convert_fp16(fp32_onnx: str | Path, out: str | Path) -> Path:
    """FP16 weights and activations, fp32 (or uint8) input and outputs kept so callers do not change."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32_onnx))
    props = list(model.metadata_props)
    try:
        half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    except Exception as exc:
        raise DigaError(f"FP16 conversion of {fp32_onnx} failed: {str(exc).splitlines()[0]}") from None
    _toposort(half.graph)  # the converter appends its input/output Casts at the end of the node list
    del half.metadata_props[:]
    half.metadata_props.extend(props)
    _set_precision(half, "fp16")
    from ..runtime.onnx_export import check_onnx, save_onnx

    check_onnx(half)
    return save_onnx(half, out)


def _toposort(graph: Any) -> None:
    """Reorder graph.node so every node comes after the producers of its inputs (onnx.checker requires it)."""
    produced_by = {out: i for i, n in enumerate(graph.node) for out in n.output}
    order: list[int] = []
    state: dict[int, int] = {}  # 1 = visiting, 2 = done

    for root in range(len(graph.node)):
        stack = [(root, False)]
        while stack:
            i, expanded = stack.pop()
            if state.get(i) == 2:
                continue
            if expanded:
                state[i] = 2
                order.append(i)
                continue
            state[i] = 1
            stack.append((i, True))
            for name in graph.node[i].input:
                j = produced_by.get(name)
                if j is not None and state.get(j) is None:
                    stack.append((j, False))
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)
