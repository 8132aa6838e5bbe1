"""ONNX export end to end on the tiny benchmark: checker, metadata, dynamic shapes, parity (pass and a
failing parity leaving nothing behind), embedded pre/post-processing, INT8 / FP16 / OpenVINO, every
runtime behind open_runtime giving the same label maps, `auto`, and the CLI (export, check, predict)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from diga_sdk.cli import main
from diga_sdk.errors import DigaError
from diga_sdk.export.pipeline import ExportParityError, export_model
from diga_sdk.models.checkpoint import checkpoint_hash, read_meta
from diga_sdk.runtime.metadata import GRAPH_KEY, HASH_KEY, META_KEY, onnx_props


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def plain(tiny_checkpoint: Path, tiny_specs: dict[str, str], work: Path) -> tuple[Path, dict]:
    """fp32 ONNX (normalised NCHW in, logits out), parity-checked on 3 real target images."""
    out = work / "plain.onnx"
    report = export_model(tiny_checkpoint, "onnx", out, parity_data=tiny_specs["target_val"], parity_images=3)
    return out, report


@pytest.fixture(scope="module")
def pre_post(tiny_checkpoint: Path, tiny_specs: dict[str, str], work: Path) -> tuple[Path, dict]:
    """uint8 NHWC in, logits + uint8 labels out."""
    out = work / "prepost.onnx"
    report = export_model(tiny_checkpoint, "onnx", out, embed_pre=True, embed_post=True,
                          parity_data=tiny_specs["target_val"], parity_images=2)
    return out, report


@pytest.fixture(scope="module")
def cache(work: Path, plain: tuple[Path, dict], tiny_checkpoint: Path, monkeypatch_module) -> Path:
    """A runtime cache already holding the checkpoint's fp32 export (the same function writes it)."""
    d = work / "cache"
    (d / "onnx").mkdir(parents=True)
    shutil.copy(plain[0], d / "onnx" / f"{checkpoint_hash(tiny_checkpoint)}.onnx")
    monkeypatch_module.setenv("DIGA_CACHE_DIR", str(d))
    return d


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _images(tiny_specs: dict[str, str], n: int = 2) -> np.ndarray:
    from diga_sdk.data.datasets import open_dataset

    ds = open_dataset(tiny_specs["target_val"])
    return np.stack([ds[i].image for i in range(n)])


def test_onnx_checker_metadata_and_dynamic_dims(plain: tuple[Path, dict], tiny_checkpoint: Path) -> None:
    path, report = plain
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert report["onnx"]["checker"] == "passed"
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    props = onnx_props(path)
    meta = read_meta(tiny_checkpoint)
    assert json.loads(props["class_names"]) == meta.class_names
    assert json.loads(props["palette"]) == meta.palette
    assert json.loads(props["mean"]) == pytest.approx(meta.mean) and json.loads(props["std"]) == pytest.approx(meta.std)
    assert json.loads(props["input_size"]) == meta.input_size
    assert props["model_name"] == "light" and props["diga.sdk_version"]
    assert props[HASH_KEY] == checkpoint_hash(tiny_checkpoint)
    assert json.loads(props[META_KEY])["model_name"] == "light"
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    out_dims = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert out_dims == ["batch", 19, "height", "width"]


def test_parity_report_meets_thresholds(plain: tuple[Path, dict]) -> None:
    par = plain[1]["parity"]
    assert par["passed"] and par["images"] == 3
    assert par["max_abs_logit_diff"] <= 1e-4 and par["argmax_agreement"] >= 99.9
    assert len(par["per_image"]) == 3 and all(p["max_abs_diff"] <= 1e-4 for p in par["per_image"])


def test_failing_parity_leaves_nothing(tiny_checkpoint: Path, tiny_specs: dict[str, str], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A real parity run with an impossible threshold (0.0) must raise and write nothing at --out."""
    import diga_sdk.export.parity as parity

    real = parity.check_parity
    monkeypatch.setattr(parity, "check_parity", lambda *a, **k: real(*a, **{**k, "max_abs_diff": -1.0}))
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportParityError, match="parity FAILED") as err:
        export_model(tiny_checkpoint, "onnx", out, parity_data=tiny_specs["target_val"], parity_images=1)
    assert not err.value.report["parity"]["passed"]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_embedded_pre_post_graph(pre_post: tuple[Path, dict], tiny_checkpoint: Path, tiny_specs: dict[str, str]) -> None:
    import onnxruntime as ort

    from diga_sdk.runtime.runtimes import open_runtime

    path, report = pre_post
    assert report["parity"]["passed"] and report["parity"]["label_output_agreement"] >= 99.9
    sess = ort.InferenceSession(str(path))
    inp = sess.get_inputs()[0]
    assert inp.name == "image" and inp.type == "tensor(uint8)" and inp.shape == ["batch", "height", "width", 3]
    assert [o.name for o in sess.get_outputs()] == ["logits", "labels"]
    assert sess.get_outputs()[1].type == "tensor(uint8)"
    imgs = _images(tiny_specs)[:, :50, :90]  # an odd size the model never saw
    labels = sess.run(["labels"], {"image": imgs})[0]
    ref = open_runtime(tiny_checkpoint, "torch").logits(imgs).argmax(1)
    assert labels.shape == (2, 50, 90) and (labels == ref).mean() >= 0.999


def test_runtimes_agree_on_every_format(plain: tuple[Path, dict], pre_post: tuple[Path, dict], tiny_checkpoint: Path,
                                        tiny_specs: dict[str, str], work: Path) -> None:
    from diga_sdk.export.openvino import convert_to_ir
    from diga_sdk.runtime.metadata import read_rt_info
    from diga_sdk.runtime.runtimes import open_runtime

    ir = convert_to_ir(plain[0], work / "ir" / "model.xml", onnx_props(plain[0]))
    assert ir.with_suffix(".bin").is_file()
    import openvino as ov

    assert read_rt_info(ov.Core().read_model(str(ir)))[HASH_KEY] == checkpoint_hash(tiny_checkpoint)
    imgs = _images(tiny_specs)[:, :60, :100]
    ref = open_runtime(tiny_checkpoint, "torch")
    ref_logits = ref.logits(imgs)
    for path, runtime in [(plain[0], "onnxruntime"), (plain[0], "openvino"), (pre_post[0], "onnxruntime"),
                          (pre_post[0], "openvino"), (ir, "openvino")]:
        rt = open_runtime(path, runtime, precision="fp32" if runtime == "openvino" else None)
        assert rt.meta == ref.meta and rt.model_hash == ref.model_hash
        logits = rt.logits(imgs)
        assert logits.shape == (2, 19, 60, 100) and logits.dtype == np.float32
        assert np.abs(logits - ref_logits).max() <= 1e-4, (path.name, runtime)
        labels = rt.predict(imgs)
        assert labels.dtype == np.uint8 and labels.shape == (2, 60, 100)
        assert (labels == ref_logits.argmax(1)).mean() >= 0.999, (path.name, runtime)


def test_int8_and_fp16(plain: tuple[Path, dict], tiny_checkpoint: Path, tiny_specs: dict[str, str], work: Path) -> None:
    from diga_sdk.export.images import dataset_images
    from diga_sdk.export.pipeline import _preprocessor
    from diga_sdk.export.quantize import convert_fp16, quantize_int8
    from diga_sdk.runtime.runtimes import open_runtime

    meta = read_meta(tiny_checkpoint)
    calib = [s.image for s in dataset_images(tiny_specs["target_train"], 4)]
    q = quantize_int8(plain[0], work / "int8.onnx", calib, _preprocessor(meta))
    qm = onnx.load(str(q))
    ops = [n.op_type for n in qm.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    inits = {i.name: i for i in qm.graph.initializer}
    per_channel = [n for n in qm.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                   and inits[n.input[0]].data_type == onnx.TensorProto.INT8 and len(inits[n.input[1]].dims) == 1
                   and inits[n.input[1]].dims[0] > 1]
    assert len(per_channel) >= 10  # conv weights: one scale per output channel
    assert json.loads(onnx_props(q)[GRAPH_KEY])["precision"] == "int8"
    h = convert_fp16(plain[0], work / "fp16.onnx")
    hm = onnx.load(str(h))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in hm.graph.initializer)
    assert hm.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    imgs = _images(tiny_specs)
    ref = open_runtime(plain[0], "onnxruntime").logits(imgs)
    for path, precision, tol in [(q, "int8", 0.25), (h, "fp16", 0.02)]:
        rt = open_runtime(path, "onnxruntime")
        assert rt.precision == precision
        out = rt.logits(imgs)
        rel = np.abs(out - ref).mean() / np.abs(ref).mean()
        assert rel < tol, (precision, rel)


def test_auto_probe_then_recorded_choice(cache: Path, tiny_checkpoint: Path, tiny_specs: dict[str, str]) -> None:
    from diga_sdk.runtime.runtimes import open_runtime

    rt = open_runtime(tiny_checkpoint, "auto")
    fp32 = {"torch-fp32", "onnxruntime-fp32", "openvino-fp32"}
    assert rt.choice["picked"] == f"{rt.name}-fp32" and set(rt.choice["ms"]) == fp32  # nothing checked: fp32 only
    assert rt.choice["ms"][rt.choice["picked"]] == min(rt.choice["ms"].values())
    recorded = json.loads((cache / "runtime-choices.json").read_text())
    assert [v["picked"] for v in recorded.values()] == [rt.choice["picked"]]
    again = open_runtime(tiny_checkpoint, "auto")
    assert again.name == rt.name and again.choice["reason"] == "recorded measurement"
    imgs = _images(tiny_specs)
    assert (again.predict(imgs) == open_runtime(tiny_checkpoint, "torch").predict(imgs)).mean() >= 0.999


def test_cli_export_check_and_predict(cache: Path, plain: tuple[Path, dict], tiny_checkpoint: Path,
                                      tiny_specs: dict[str, str], tiny_benchmark: Path, tmp_path: Path) -> None:
    from PIL import Image

    from diga_sdk.models.checkpoint import ModelMeta, save_checkpoint
    from diga_sdk.models.registry import build_model
    from diga_sdk.runtime.runtimes import open_runtime

    report = tmp_path / "check.json"
    assert main(["export", "check", "--model", str(tiny_checkpoint), "--exported", str(plain[0]),
                 "--data", tiny_specs["target_val"], "--images", "2", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["passed"] is True
    other = save_checkpoint(build_model("light"), tmp_path / "other.safetensors", ModelMeta(model_name="light"))
    assert main(["export", "check", "--model", str(other), "--exported", str(plain[0]),
                 "--data", tiny_specs["target_val"]]) == 1
    images = sorted((tiny_benchmark / "target" / "leftImg8bit" / "val").rglob("*.png"))[:2]
    out = tmp_path / "pred"
    assert main(["predict", *map(str, images), "--model", str(plain[0]), "--out", str(out), "--color",
                 "--runtime", "onnxruntime", "--json", str(tmp_path / "pred.json")]) == 0
    rt = open_runtime(tiny_checkpoint, "torch")
    for img in images:
        written = np.asarray(Image.open(out / f"{img.stem}.png"))
        expected = rt.predict(np.asarray(Image.open(img).convert("RGB"))[None])[0]
        assert written.dtype == np.uint8 and (written == expected).mean() >= 0.999
        assert np.asarray(Image.open(out / f"{img.stem}_color.png")).shape == (*expected.shape, 3)
    assert json.loads((tmp_path / "pred.json").read_text())["runtime"] == "onnxruntime (fp32)"


def test_export_errors(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(DigaError, match="not found"):
        export_model(tmp_path / "missing.safetensors", "onnx", tmp_path / "m.onnx")
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DigaError, match="corrupt"):
        export_model(bad, "onnx", tmp_path / "m.onnx")
    with pytest.raises(DigaError, match="unsupported export format 'tflite'.*onnx-int8"):
        export_model(tiny_checkpoint, "tflite", tmp_path / "m.tflite")
    with pytest.raises(DigaError, match="ending in .xml"):
        export_model(tiny_checkpoint, "openvino", tmp_path / "m.onnx")
    with pytest.raises(DigaError, match="opset 16 is too old"):
        export_model(tiny_checkpoint, "onnx", tmp_path / "m.onnx", opset=16, parity_data=None)
    assert list(tmp_path.iterdir()) == [bad]
    assert main(["export", "--model", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "x.onnx")]) == 1


def test_bf16_emulation_rounds_but_stays_close(tiny_checkpoint: Path, tiny_specs: dict[str, str]) -> None:
    import torch

    from diga_sdk.runtime.runtimes import open_runtime

    imgs = _images(tiny_specs)
    fp = open_runtime(tiny_checkpoint, "torch")
    bf = open_runtime(tiny_checkpoint, "torch", precision="bf16-emulated")
    assert bf.precision == "bf16-emulated"
    conv = next(m for m in bf.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert torch.equal(conv.weight, conv.weight.to(torch.bfloat16).float())  # weights hold bf16 values
    a, b = fp.logits(imgs), bf.logits(imgs)
    rel = np.abs(a - b).mean() / np.abs(a).mean()
    assert 0 < rel < 0.03


@pytest.mark.slow
def test_fast_model_exports_with_parity_to_onnx_int8_and_openvino(tiny_specs: dict[str, str], tmp_path: Path) -> None:
    """The two-branch `fast` model (bilinear fusions, pooling pyramid, dynamic sizes) through every CPU format."""
    from diga_sdk.adapt.supervised import train_supervised
    from diga_sdk.config import ModelConfig, TrainConfig
    from diga_sdk.runtime.runtimes import open_runtime

    cfg = TrainConfig(model=ModelConfig(name="fast"), train_data=tiny_specs["source_train"], val_data=[], steps=3,
                      batch_size=2, crop=(64, 128), scale=(0.75, 1.0), checkpoint_every=2)
    ckpt = train_supervised(cfg, tmp_path / "fast", stage="source_only")
    fp32 = tmp_path / "fast.onnx"
    report = export_model(ckpt, "onnx", fp32, parity_data=tiny_specs["target_val"], parity_images=2)
    assert report["parity"]["passed"] and report["parity"]["max_abs_logit_diff"] <= 1e-4
    assert onnx_props(fp32)["model_name"] == "fast"
    import torch

    from diga_sdk.models.fast import FastSegmenter

    # the deployed graph is the folded one: as many convolutions as the model without training branches
    plain_convs = sum(isinstance(m, torch.nn.Conv2d) for m in FastSegmenter(reparam=False).modules())
    assert sum(n.op_type == "Conv" for n in onnx.load(str(fp32)).graph.node) == plain_convs
    imgs = _images(tiny_specs)[:, :56, :120]  # a size the model never saw: the fusions resize dynamically
    ref = open_runtime(ckpt, "torch").logits(imgs)
    got = open_runtime(fp32, "openvino", precision="fp32").logits(imgs)
    assert got.shape == (2, 19, 56, 120) and np.abs(got - ref).max() <= 1e-3
    from diga_sdk.export.images import dataset_images
    from diga_sdk.export.pipeline import _preprocessor
    from diga_sdk.export.quantize import quantize_int8

    calib = [s.image for s in dataset_images(tiny_specs["target_train"], 4, (64, 128))]
    q = quantize_int8(fp32, tmp_path / "fast.int8.onnx", calib, _preprocessor(read_meta(ckpt)))
    out = open_runtime(q, "onnxruntime").logits(imgs)
    assert np.abs(out - ref).mean() / np.abs(ref).mean() < 0.25
    assert (out.argmax(1) == ref.argmax(1)).mean() > 0.8


def test_openvino_runtimes_replaced_out_of_order_leave_signals_deliverable(plain: tuple[Path, dict]) -> None:
    """OpenVINO's CPU plugin leaves the compiling thread a dangling alternate signal stack when compiled
    models are released out of order; the next Python-handled signal (a DataLoader's SIGCHLD) then killed
    the process with SIGSEGV. Runtimes replacing each other (hot-swap, `auto`) must leave it as it was."""
    code = f"""
import signal, subprocess
from diga_sdk.runtime.runtimes import open_runtime
from diga_sdk.runtime.signal_stack import current_signal_stack
before = current_signal_stack()
rt = open_runtime({str(plain[0])!r}, "openvino", precision="fp32")
rt = open_runtime({str(plain[0])!r}, "openvino", precision="fp32")
rt = open_runtime({str(plain[0])!r}, "openvino", precision="fp32")
del rt
assert current_signal_stack() == before, (current_signal_stack(), before)
signal.signal(signal.SIGCHLD, lambda *_: None)
subprocess.run(["true"], check=True)
print("alive")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "alive", (out.returncode, out.stderr[-2000:])


def test_onnxruntime_labels_come_from_the_coarse_graph_with_the_fused_upsample(plain: tuple[Path, dict],
                                                                              tiny_specs: dict[str, str]) -> None:
    """On CPU the labels skip the graph's full-size Resize (the fused kernel upsamples and takes the
    argmax); they must be the argmax of the full graph's logits wherever the top two are not tied."""
    from diga_sdk.runtime.runtimes import OnnxRuntime, open_runtime

    imgs = _images(tiny_specs)[:, :60, :100]
    fused = open_runtime(plain[0], "onnxruntime")
    assert fused.fused_labels
    labels, logits = fused.predict(imgs), fused.logits(imgs)
    assert labels.dtype == np.uint8 and labels.shape == (2, 60, 100)
    top2 = np.sort(logits, axis=1)[:, -2:]
    differ = labels != logits.argmax(1)
    assert differ.mean() <= 1e-3 and np.all((top2[:, 1] - top2[:, 0])[differ] < 1e-4)
    unfused = OnnxRuntime(plain[0], fused_labels=False)
    assert not unfused.fused_labels and (unfused.predict(imgs) == labels).mean() >= 0.999
