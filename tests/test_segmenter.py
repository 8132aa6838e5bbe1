"""The Python API: `diga.Segmenter` on the tiny benchmark, the user's quick-start script, and agreement with the CLI."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from online_fixtures import train_small_model
from PIL import Image

import diga_sdk as diga
from diga_sdk.cli import main
from diga_sdk.data.images import overlay as shared_overlay
from diga_sdk.errors import DigaError

ROOT = Path(__file__).resolve().parents[1]


def _target_val_images(tiny_benchmark: Path) -> list[Path]:
    return sorted((tiny_benchmark / "target" / "leftImg8bit" / "val").rglob("*.png"))


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small_model(tmp_path_factory, tiny_specs) -> Path:
    """A light model trained enough on the tiny source split to predict several classes (not a constant map)."""
    return train_small_model(tmp_path_factory.mktemp("segmenter-model"), tiny_specs["source_train"])


@pytest.fixture(scope="module")
def quickstart(small_model, tiny_specs, tiny_benchmark, tmp_path_factory) -> dict:
    """examples/quickstart.py run on the tiny benchmark (its checkpoint, a target-val image, its splits)."""
    out = tmp_path_factory.mktemp("quickstart")
    image = _target_val_images(tiny_benchmark)[0]
    res = _load_example("quickstart").main(str(small_model), str(image), tiny_specs["target_val"],
                                           tiny_specs["target_train"], str(out))
    return {**res, "out": out, "image": image, "checkpoint": small_model}


@pytest.mark.slow  # shares the quick-start run: two exports with parity, INT8 calibration
def test_quickstart_predicts_overlays_and_saves(quickstart):
    r, image = quickstart["prediction"], np.asarray(Image.open(quickstart["image"]).convert("RGB"))
    assert r.labels.shape == image.shape[:2] and r.labels.dtype == np.uint8
    assert np.array_equal(r.image, image)
    valid = (r.labels < 19) | (r.labels == 255)
    assert valid.all() and len(np.unique(r.labels)) > 1  # a trained model, not a constant map
    assert quickstart["overlay"].shape == image.shape and quickstart["overlay"].dtype == np.uint8
    assert np.array_equal(quickstart["overlay"], shared_overlay(image, r.labels, r.palette, 0.5))
    assert not np.array_equal(quickstart["overlay"], image)
    saved = np.asarray(Image.open(quickstart["out"] / "labels.png"))
    assert np.array_equal(saved, r.labels)
    json.loads(r.to_json())  # typed results serialise


@pytest.mark.slow  # shares the quick-start run: two exports with parity, INT8 calibration
def test_quickstart_onnx_predicts_the_checkpoints_labels(quickstart):
    """The exported fp32 ONNX gives the checkpoint's labels on >= 99.9 % of pixels; the INT8 export passed parity."""
    from diga_sdk.runtime.runtimes import open_runtime

    r, from_onnx = quickstart["prediction"], quickstart["from_onnx"]
    assert "onnxruntime" in from_onnx.runtime or "openvino" in from_onnx.runtime
    torch_labels = open_runtime(quickstart["checkpoint"], "torch").predict(r.image[None])[0]
    agreement = float((from_onnx.labels == torch_labels).mean())
    assert agreement >= 0.999, agreement
    assert float((r.labels == torch_labels).mean()) >= 0.999  # whichever runtime `auto` picked for the checkpoint
    int8 = quickstart["int8"]
    assert int8.format == "onnx-int8" and int8.path.is_file() and int8.parity_passed is True
    assert quickstart["onnx"].to_dict()["parity"]["passed"] is True
    assert json.loads(int8.to_json())["out"] == str(int8.path)


@pytest.mark.slow  # shares the quick-start run: two exports with parity, INT8 calibration
def test_val_equals_diga_eval(quickstart, small_model, tiny_specs, tmp_path):
    js = tmp_path / "eval.json"
    assert main(["eval", "--model", str(small_model), "--data", tiny_specs["target_val"], "--json", str(js)]) == 0
    cli = json.loads(js.read_text())[tiny_specs["target_val"]]
    ev = quickstart["eval"]
    assert ev.miou == cli["miou"] and ev.pixel_acc == cli["pixel_accuracy"] and ev.per_class == cli["per_class"]
    assert 0 < ev.miou < 100 and set(ev.per_class) == set(diga.Segmenter(small_model).meta.class_names)


@pytest.mark.slow  # shares the quick-start run: two exports with parity, INT8 calibration
def test_val_of_the_onnx_export_matches_the_checkpoint(quickstart, tiny_specs):
    """The exported model evaluated by its runtime scores what the checkpoint scores (fp32 parity)."""
    ev = diga.Segmenter(quickstart["onnx"].path).val(tiny_specs["target_val"])
    assert abs(ev.miou - quickstart["eval"].miou) < 0.1


def test_predict_color_matches_the_http_overlay(small_model, tiny_benchmark, tmp_path):
    """`diga predict --color` writes the same overlay the HTTP endpoint answers for format=overlay."""
    from diga_sdk.runtime.runtimes import open_runtime
    from diga_sdk.serving.pipeline import segment_bytes

    image = _target_val_images(tiny_benchmark)[0]
    rt = open_runtime(small_model, "torch")
    assert Image.open(image).size[::-1] == tuple(rt.meta.input_size)  # same size: the server does not resize
    labels = rt.predict(np.asarray(Image.open(image).convert("RGB"))[None])[0]
    assert len(np.unique(labels)) > 1 and (labels == 255).sum() == 0
    assert main(["predict", str(image), "--model", str(small_model), "--runtime", "torch", "--color",
                 "--out", str(tmp_path)]) == 0
    cli_overlay = np.asarray(Image.open(tmp_path / f"{image.stem}_color.png"))
    meta = {"input_size": list(rt.meta.input_size), "palette": rt.meta.palette, "class_names": rt.meta.class_names}
    body, media = segment_bytes(image.read_bytes(), rt.predict, meta, fmt="overlay", alpha=0.5)
    http_overlay = np.asarray(Image.open(__import__("io").BytesIO(body)))
    assert media == "image/png" and np.array_equal(cli_overlay, http_overlay)


def test_predict_takes_arrays_lists_and_rejects_bad_input(small_model, tiny_benchmark):
    seg = diga.Segmenter(small_model, runtime="torch")
    paths = _target_val_images(tiny_benchmark)[:2]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    from_paths = seg.predict(paths, batch_size=2)
    from_arrays = seg.predict(arrays)
    assert len(from_paths) == 2 and all(np.array_equal(a.labels, b.labels) for a, b in zip(from_paths, from_arrays, strict=True))
    assert from_paths[1].path == paths[1] and from_arrays[0].path is None
    from_batch = seg.predict(np.stack(arrays))  # a (B,H,W,3) batch is B images
    assert all(np.array_equal(a.labels, b.labels) for a, b in zip(from_batch, from_arrays, strict=True))
    with pytest.raises(DigaError, match=r"\(H,W,3\) uint8"):
        seg.predict(arrays[0].astype(np.float32))
    with pytest.raises(DigaError, match="does not exist"):
        seg.predict("no/such/image.png")
    with pytest.raises(DigaError, match="not found"):
        diga.Segmenter("no/such/model.safetensors")
    with pytest.raises(DigaError, match=r"\.png"):
        from_paths[0].save("labels.jpg")


@pytest.mark.slow  # shares the quick-start run: two exports with parity, INT8 calibration
def test_export_needs_the_checkpoint(quickstart):
    with pytest.raises(DigaError, match="checkpoint"):
        diga.Segmenter(quickstart["onnx"].path).export("onnx", quickstart["out"] / "again.onnx")


def test_online_adapter_from_the_segmenter(small_model, tiny_benchmark):
    seg = diga.Segmenter(small_model)
    adapter = seg.online({"crop": [32, 64], "replay_capacity": 2, "safety": {"calib_frames": 1}})
    assert adapter.cfg.crop == (32, 64) and adapter.cfg.safety.calib_frames == 1
    frame = np.asarray(Image.open(_target_val_images(tiny_benchmark)[0]).convert("RGB"))
    result = adapter.process(frame)
    assert result.pred.shape == frame.shape[:2] and result.action == "calibrate"
    with pytest.raises(DigaError, match="replay_capacity"):
        seg.online({"replay_capacity": -1})


@pytest.mark.slow  # shares the quick-start run: two exports with parity, INT8 calibration
def test_benchmark_of_an_export(quickstart):
    rep = diga.Segmenter(quickstart["onnx"].path, runtime="onnxruntime").benchmark(sizes=[(64, 128)], runs=2, warmup=1)
    (row,) = rep.rows
    assert row["size"] == "64x128" and row["p50_ms"] > 0 and row["runs"] == 2
    assert rep.p50_ms(row["variant"], "64x128") == row["p50_ms"]
    assert "64x128" in rep.table() and json.loads(rep.to_json())["rows"][0]["variant"] == row["variant"]


@pytest.mark.slow
def test_adapt_returns_stages_and_the_final_segmenter(small_model, tiny_specs, tmp_path):
    seg = diga.Segmenter(small_model)
    small = {"warmup": {"steps": 2, "batch_size": 2}, "selftrain": {"steps": 2, "batch_size": 2}, "rounds": 0,
             "crop": [64, 128], "scale": [0.75, 1.0], "checkpoint_every": 2, "source_val": None}
    run = seg.adapt(source=tiny_specs["source_train"], target=tiny_specs["target_train"],
                    target_val=tiny_specs["target_val"], config=small, out=tmp_path / "run")
    assert [s["name"] for s in run.stages] == ["warmup", "selftrain"]
    final = run.final
    assert isinstance(final, diga.Segmenter) and final.path == Path(run.stages[-1]["checkpoint"])
    assert final.val(tiny_specs["target_val"]).miou == pytest.approx(run.stages[-1]["target_val_miou"])
    assert json.loads(run.to_json())["stages"][0]["name"] == "warmup"


@pytest.mark.slow  # two short runs: dg (source model + 2 steps) and semi (2 steps per stage)
def test_adapt_modes_dg_and_semi_from_the_segmenter(tiny_checkpoint, tiny_specs, tmp_path):
    """The same verb runs the method's other two uses: a few steps each, typed results like mode="uda"."""
    seg = diga.Segmenter(tiny_checkpoint)
    small = {"crop": [64, 128], "scale": [0.75, 1.0], "checkpoint_every": 2}
    dg = seg.adapt(source=tiny_specs["source_train"], eval_sets=[tiny_specs["target_val"], tiny_specs["source_val"]],
                   config={**small, "dg": {"steps": 2, "batch_size": 2, "mix": False}}, mode="dg", out=tmp_path / "dg")
    assert dg.mode == "dg" and [s["name"] for s in dg.stages] == ["init", "dg"]
    assert dg.stages[0]["checkpoint"] == str(tiny_checkpoint)  # this model is the baseline and DG's start
    margin = dg.details["margin_dg_minus_init"][tiny_specs["target_val"]]
    assert margin == pytest.approx(dg.miou("dg") - dg.miou("init"))
    assert dg.final.path == tmp_path / "dg" / "dg" / "model.safetensors"
    assert json.loads(dg.to_json())["stages"][1]["name"] == "dg"

    distil = {"steps": 2, "batch_size": 2}
    semi = seg.adapt(target=tiny_specs["target_train"], target_val=tiny_specs["target_val"], labelled_fraction=0.25,
                     config={"supervised": {"steps": 2, "batch_size": 2, "crop": [64, 128], "val_data": []},
                             "adapt": {**small, "warmup": distil, "selftrain": distil, "rounds": 0}},
                     mode="semi", out=tmp_path / "semi")
    assert semi.mode == "semi" and [s["name"] for s in semi.stages] == ["supervised", "warmup", "selftrain"]
    assert semi.details["labelled"] == 3 and semi.details["unlabelled"] == 9
    assert all(0.0 <= semi.miou(s["name"]) <= 100.0 for s in semi.stages)
    sup = diga.Segmenter(semi.stages[0]["checkpoint"])
    assert sup.meta.model_name == seg.meta.model_name  # the supervised stage fine-tuned this model
    assert semi.final.val(tiny_specs["target_val"]).miou == pytest.approx(semi.miou("selftrain"))
    with pytest.raises(DigaError, match="takes no source"):
        seg.adapt(source=tiny_specs["source_train"], mode="semi", out=tmp_path / "x")
    with pytest.raises(DigaError, match="unknown adaptation mode"):
        seg.adapt(mode="ssl", out=tmp_path / "x")


def test_importing_diga_sdk_loads_no_optional_extra():
    code = ("import sys, diga_sdk; heavy = ('torch', 'onnx', 'onnxruntime', 'openvino', 'bentoml', 'triton', 'flwr', "
            "'tensorrt', 'numba', 'kornia'); print([m for m in heavy if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
    assert hasattr(diga, "Segmenter") and hasattr(diga, "EvalResult")
