"""TensorRT argument handling and the sidecar check (run everywhere), runtime argument errors, and the
clear failure without a GPU. The engine build itself needs an NVIDIA GPU and is not run here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diga_sdk.cli import main
from diga_sdk.errors import DigaError
from diga_sdk.export.pipeline import check_format_args
from diga_sdk.runtime import tensorrt as trt_mod

BUILT = {"tensorrt": "10.7.0", "cuda": "12.6", "gpu": "NVIDIA L4", "compute_capability": "8.9"}


def _sidecar(**over) -> dict:
    return {"sidecar_version": 1, "meta": {"model_name": "light"}, "graph": {"input_name": "input"},
            "built_with": {**BUILT, **over}}


def test_profile_parsing_and_defaults() -> None:
    prof = trt_mod.build_profile()
    assert prof == {"min": (1, 3, 256, 512), "opt": (1, 3, 512, 1024), "max": (4, 3, 1024, 2048)}
    prof = trt_mod.build_profile("1x3x128x256", "2x3x256x512", "8x3x512x1024")
    assert prof["opt"] == (2, 3, 256, 512) and prof["max"] == (8, 3, 512, 1024)
    for bad, msg in [("1x3x256", "four positive sizes"), ("1x4x256x512", "channel size must be 3"),
                     ("axbxcxd", "write BxCxHxW"), ("0x3x256x512", "four positive sizes")]:
        with pytest.raises(DigaError, match=msg):
            trt_mod.build_profile(min_shape=bad)
    with pytest.raises(DigaError, match="min <= opt <= max on H"):
        trt_mod.build_profile("1x3x1024x512", "1x3x512x1024")
    assert trt_mod.graph_layout_shape((1, 3, 256, 512), embed_pre=True) == (1, 256, 512, 3)
    assert trt_mod.graph_layout_shape((1, 3, 256, 512), embed_pre=False) == (1, 3, 256, 512)


def test_sidecar_check_accepts_match_and_names_each_mismatch() -> None:
    trt_mod.check_sidecar(_sidecar(), dict(BUILT))  # same versions: no error
    with pytest.raises(DigaError, match=r"built with TensorRT 10\.7\.0 but TensorRT 11\.0\.0 is installed.*rebuild"):
        trt_mod.check_sidecar(_sidecar(), {**BUILT, "tensorrt": "11.0.0"})
    with pytest.raises(DigaError, match=r"compute capability 8\.9 .*this GPU is 9\.0"):
        trt_mod.check_sidecar(_sidecar(), {**BUILT, "compute_capability": "9.0", "gpu": "H100"})
    with pytest.raises(DigaError, match="tensorrt Python package is not installed.*onnx-int8"):
        trt_mod.check_sidecar(_sidecar(), {**BUILT, "tensorrt": None})
    with pytest.raises(DigaError, match="no CUDA GPU"):
        trt_mod.check_sidecar(_sidecar(), {**BUILT, "compute_capability": None})


def test_sidecar_files(tmp_path: Path) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not really an engine")
    assert trt_mod.sidecar_path(engine) == tmp_path / "model.engine.json"
    with pytest.raises(DigaError, match="has no sidecar"):
        trt_mod.read_sidecar(engine)
    trt_mod.sidecar_path(engine).write_text("{broken")
    with pytest.raises(DigaError, match="unreadable"):
        trt_mod.read_sidecar(engine)
    trt_mod.sidecar_path(engine).write_text(json.dumps({"sidecar_version": 1, "meta": {}}))
    with pytest.raises(DigaError, match="lacks graph, built_with"):
        trt_mod.read_sidecar(engine)
    trt_mod.sidecar_path(engine).write_text(json.dumps(_sidecar()))
    assert trt_mod.read_sidecar(engine)["built_with"]["tensorrt"] == "10.7.0"
    # Loading checks the sidecar against this machine before TensorRT touches the bytes.
    installed = trt_mod.installed_versions()
    if installed != {**installed, **BUILT}:
        with pytest.raises(DigaError, match="TensorRT|GPU"):
            trt_mod.load_engine(engine)


def test_tensorrt_fails_fast_without_gpu(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DigaError, match=r"NVIDIA GPU.*--format onnx / onnx-int8 / openvino"):
        check_format_args("tensorrt", tmp_path / "m.engine")
    with pytest.raises(DigaError, match="precision 'int4' unsupported"):
        check_format_args("tensorrt", tmp_path / "m.engine", precision="int4")
    with pytest.raises(DigaError, match="only applies to --format tensorrt"):
        check_format_args("onnx", tmp_path / "m.onnx", precision="fp16")
    with pytest.raises(DigaError, match="ending in .engine"):
        check_format_args("tensorrt", tmp_path / "m.onnx")
    # The CLI fails at once (exit 1) before exporting anything.
    assert main(["export", "--model", str(tiny_checkpoint), "--format", "tensorrt", "--out",
                 str(tmp_path / "m.engine")]) == 1
    assert main(["export", "--model", str(tiny_checkpoint), "--format", "tensorrt", "--out",
                 str(tmp_path / "m.engine"), "--min", "1x3x9x9", "--opt", "1x3x8x8"]) == 1
    assert main(["export", "--model", str(tiny_checkpoint), "--format", "onnx", "--out",
                 str(tmp_path / "m.onnx"), "--min", "1x3x256x512"]) == 1
    assert list(tmp_path.iterdir()) == []


def test_runtime_argument_errors(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from diga_sdk.runtime.runtimes import check_images, model_format, open_runtime

    with pytest.raises(DigaError, match="unsupported model file"):
        model_format(tmp_path / "model.pt")
    with pytest.raises(DigaError, match="not found"):
        open_runtime(tmp_path / "missing.onnx")
    with pytest.raises(DigaError, match="unknown runtime 'tflite'"):
        open_runtime(tiny_checkpoint, "tflite")
    with pytest.raises(DigaError, match="build an engine with `diga export --format tensorrt`"):
        open_runtime(tiny_checkpoint, "tensorrt")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(DigaError, match="has no sidecar"):
        open_runtime(engine)
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"garbage")
    with pytest.raises(DigaError, match="torch runtime needs the .safetensors checkpoint"):
        open_runtime(onnx_file, "torch")
    with pytest.raises(DigaError, match="onnxruntime cannot load"):
        open_runtime(onnx_file, "onnxruntime")
    with pytest.raises(DigaError, match="precision 'int8' unsupported"):
        open_runtime(tiny_checkpoint, "torch", precision="int8")
    for bad, msg in [(np.zeros((64, 64, 3), np.uint8), r"shape \(B,H,W,3\)"),
                     (np.zeros((1, 64, 64, 3), np.float32), "uint8"), ([1, 2], "numpy array"),
                     (np.zeros((1, 4, 64, 3), np.uint8), "too small")]:
        with pytest.raises(DigaError, match=msg):
            check_images(bad)
