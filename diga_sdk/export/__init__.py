"""Deployment export: ONNX (with parity checks), INT8 / FP16 ONNX, OpenVINO IR, TensorRT engines.

Nothing heavy is imported here: onnx, onnxruntime, openvino and tensorrt load inside the modules
that need them.
"""

from __future__ import annotations

EXPORT_FORMATS = ("onnx", "onnx-int8", "onnx-fp16", "openvino", "openvino-int8", "tensorrt")

__all__ = ["EXPORT_FORMATS"]
