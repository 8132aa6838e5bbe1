"""Operator-facing failure paths of the `diga` command: every failure ends with a non-zero exit code and
one plain-text line (no traceback, no rich markup), no output is overwritten silently, every number is
checked where it enters, `--resume` on nothing is an error, files are written with the umask's mode."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from diga_sdk.cli import main

PY = [sys.executable, "-m", "diga_sdk.cli"]


def _err_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error:")]


def _train_args(specs: dict[str, str], out: Path, steps: int = 1) -> list[str]:
    cfg = out.parent / "train.yaml"
    cfg.write_text(yaml.safe_dump({"val_data": [], "crop": [64, 128], "scale": [0.75, 1.0]}))
    return ["train", "--config", str(cfg), "--data", specs["source_train"], "--out", str(out), "--steps", str(steps),
            "--batch-size", "1"]


def _tiny_cfg(tmp_path: Path, specs: dict[str, str], **kw) -> Path:
    cfg = {"train_data": specs["source_train"], "val_data": [], "crop": [64, 128], "scale": [0.75, 1.0], **kw}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------------------------------ usage errors
@pytest.mark.parametrize("argv", [["trian"], ["train", "--bogus"], ["adapt", "dg"], ["eval", "--subset", "x"]])
def test_usage_errors_exit_2_with_one_line(argv, capsys) -> None:
    assert main(argv) == 2
    lines = _err_lines(capsys)
    assert len(lines) == 1 and "--help" in lines[0], lines


def test_usage_error_in_a_real_process_has_no_traceback() -> None:
    proc = subprocess.run([*PY, "trian"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "No such command 'trian'" in proc.stderr


def test_errors_are_printed_as_plain_text_not_markup(tmp_path, capsys) -> None:
    odd = tmp_path / "odd[/]name [bold]x.safetensors"
    assert main(["eval", "--model", str(odd), "--data", "synthetic:target@val"]) == 1
    lines = _err_lines(capsys)
    assert len(lines) == 1 and str(odd) in lines[0], lines
    from diga_sdk.progress import print_error

    print_error("TensorRT needs the gpu extra (pip install 'diga-sdk[gpu]')")
    assert "'diga-sdk[gpu]'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- Ctrl-C
def _interrupt_when(proc: subprocess.Popen[str], ready: Path, timeout: float = 180) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the run never saved a state"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.slow
def test_ctrl_c_during_train_and_adapt_exits_130_after_saving_the_state(tiny_specs, tiny_checkpoint, tmp_path):
    env = {**os.environ, "DIGA_NO_PROGRESS": "1"}
    cfg = _tiny_cfg(tmp_path, tiny_specs, checkpoint_every=1, batch_size=1)
    run = tmp_path / "run"
    proc = subprocess.Popen([*PY, "train", "--config", str(cfg), "--out", str(run), "--steps", "100000"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    code, err = _interrupt_when(proc, run / "state" / "train_state.json")
    assert code == 130, err
    assert "Traceback" not in err and "--resume" in err and "error: interrupted" in err
    step = json.loads((run / "state" / "train_state.json").read_text())["step"]
    assert 1 <= step < 100000 and not (run / "model.safetensors").exists()

    acfg = tmp_path / "adapt.yaml"
    acfg.write_text(yaml.safe_dump({"source": tiny_specs["source_train"], "target": tiny_specs["target_train"],
                                    "crop": [64, 128], "checkpoint_every": 1,
                                    "warmup": {"steps": 100000, "batch_size": 1}}))
    stage = tmp_path / "warmup"
    proc = subprocess.Popen([*PY, "adapt", "warmup", "--init", str(tiny_checkpoint), "--config", str(acfg),
                             "--out", str(stage)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env)
    code, err = _interrupt_when(proc, stage / "state" / "train_state.json")
    assert code == 130 and "Traceback" not in err and "--resume" in err, err
    info = json.loads((stage / "state" / "train_state.json").read_text())
    assert 1 <= info["step"] < 100000 and len(info["init_sha256"]) == 64


# ------------------------------------------------------------------------------------ numbers checked
@pytest.mark.parametrize("extra", [["--steps", "-3"], ["--batch-size", "0"]])
def test_train_numbers_are_checked_by_the_option(extra, tiny_specs, tmp_path, capsys) -> None:
    assert main(["train", "--data", tiny_specs["source_train"], "--out", str(tmp_path / "r"), *extra]) == 2
    assert len(_err_lines(capsys)) == 1 and not (tmp_path / "r").exists()


def test_bad_crop_fails_before_a_run_folder_is_made(tiny_specs, tmp_path, capsys) -> None:
    for crop, words in (([0, 0], "crop"), ([512, 1024], "larger than the images")):
        cfg = _tiny_cfg(tmp_path, tiny_specs, crop=crop, steps=1, batch_size=1)
        assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 1
        lines = _err_lines(capsys)
        assert len(lines) == 1 and words in lines[0], lines
        assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv", [
    ["adapt", "--out", "R", "--rounds", "-1"],
    ["adapt", "selftrain", "--init", "m", "--pseudo", "p", "--out", "o", "--threshold", "5"],
    ["adapt", "selftrain", "--init", "m", "--pseudo", "p", "--out", "o", "--threshold", "0"],
    ["eval", "--model", "m.safetensors", "--data", "synthetic:target@val", "--subset", "7"],
    ["bench", "latency", "--model", "m.safetensors", "--sizes", "64x128", "--batch", "0", "--paths", "torch-fp32"],
])
def test_numbers_out_of_range_are_usage_errors(argv, capsys) -> None:
    assert main(argv) == 2
    assert len(_err_lines(capsys)) == 1


def test_config_numbers_are_checked() -> None:
    from diga_sdk.config import AdaptConfig, TrainConfig, load_config
    from diga_sdk.errors import DigaError

    for cls, overrides in ((TrainConfig, {"steps": 0}), (TrainConfig, {"crop": [0, 64]}),
                           (TrainConfig, {"scale": [1.5, 0.5]}), (AdaptConfig, {"rounds": -1}),
                           (AdaptConfig, {"selection.threshold": 5.0}), (AdaptConfig, {"warmup.batch_size": 0}),
                           (AdaptConfig, {"pseudo.scales": []})):
        with pytest.raises(DigaError):
            load_config(None, cls, overrides)


def test_unsupported_opset_is_refused(tiny_checkpoint, tmp_path, capsys) -> None:
    from diga_sdk.runtime.onnx_export import supported_opsets

    low, high = supported_opsets()
    assert main(["export", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "m.onnx"), "--opset", "99",
                 "--no-parity"]) == 1
    lines = _err_lines(capsys)
    assert len(lines) == 1 and f"--opset {low} to {high}" in lines[0] and not (tmp_path / "m.onnx").exists()


def test_latency_measure_refuses_batch_0() -> None:
    from diga_sdk.bench.latency import measure
    from diga_sdk.errors import DigaError

    with pytest.raises(DigaError, match="at least 1"):
        measure([], [(64, 128)], [0])


# ------------------------------------------------------------------------------ overwrite and resume
def test_train_refuses_a_finished_run_without_resume_or_overwrite(tiny_specs, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert main(_train_args(tiny_specs, run)) == 0
    before = (run / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(_train_args(tiny_specs, run, steps=2)) == 1
    lines = _err_lines(capsys)
    assert len(lines) == 1 and "--resume" in lines[0] and "--overwrite" in lines[0]
    assert (run / "model.safetensors").read_bytes() == before
    assert main([*_train_args(tiny_specs, run, steps=2), "--overwrite"]) == 0
    assert json.loads((run / "state" / "train_state.json").read_text())["step"] == 2


def test_resume_on_nothing_is_an_error(tiny_specs, tiny_checkpoint, tmp_path, capsys) -> None:
    missing = tmp_path / "nothing"
    assert main([*_train_args(tiny_specs, missing), "--resume"]) == 1
    assert "holds no run" in _err_lines(capsys)[0] and not missing.exists()
    assert main(["adapt", "--out", str(missing), "--resume", "--source", tiny_specs["source_train"]]) == 1
    assert "no DiGA run" in _err_lines(capsys)[0]
    assert main(["adapt", "online", "--model", str(tiny_checkpoint), "--stream", "folder:/x",
                 "--state", str(tmp_path / "s.safetensors"), "--resume"]) == 1
    assert "does not exist" in _err_lines(capsys)[0]


def test_stage_command_refuses_or_cleans_a_finished_stage(tiny_specs, tiny_checkpoint, tmp_path, capsys) -> None:
    stage = tmp_path / "warmup"
    stage.mkdir()
    (stage / "stage.json").write_text(json.dumps({"name": "warmup", "checkpoint": "old"}))
    argv = ["adapt", "warmup", "--init", str(tiny_checkpoint), "--source", tiny_specs["source_train"],
            "--target", tiny_specs["target_train"], "--out", str(stage), "--steps", "1"]
    assert main(argv) == 1
    assert "--overwrite" in _err_lines(capsys)[0]
    cfg = tmp_path / "a.yaml"
    cfg.write_text(yaml.safe_dump({"crop": [64, 128], "warmup": {"batch_size": 1}, "target_val": tiny_specs["target_val"],
                                   "source_val": None}))
    assert main([*argv, "--config", str(cfg), "--overwrite"]) == 0
    assert (stage / "model.safetensors").is_file() and not (stage / "stage.json").exists()


@pytest.mark.slow
def test_online_resume_refuses_a_state_of_another_model(tiny_benchmark, tiny_checkpoint, tmp_path, capsys) -> None:
    from diga_sdk.models.checkpoint import load_checkpoint, save_checkpoint

    state = tmp_path / "online.safetensors"
    stream = ["--stream", f"folder:{tiny_benchmark}/target/leftImg8bit/train", "--frames", "2", "--size", "64x128",
              "--no-compare-frozen", "--state", str(state)]
    assert main(["adapt", "online", "--model", str(tiny_checkpoint), *stream]) == 0
    assert state.is_file()
    assert main(["adapt", "online", "--model", str(tiny_checkpoint), *stream]) == 1  # exists: --resume or a new file
    assert "--resume" in _err_lines(capsys)[0]
    model, meta = load_checkpoint(tiny_checkpoint)
    other = save_checkpoint(model, tmp_path / "other.safetensors", meta.model_copy(update={"stage": "other"}))
    assert main(["adapt", "online", "--model", str(other), *stream, "--resume"]) == 1
    assert "another model" in _err_lines(capsys)[0]


def test_predict_keeps_relative_paths_and_refuses_overwrites(tiny_benchmark, tiny_checkpoint, tmp_path, capsys):
    src = tiny_benchmark / "source" / "train" / "images"
    a, b = tmp_path / "in" / "a", tmp_path / "in" / "b"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    name = sorted(src.iterdir())[0].name
    shutil.copy(src / name, a / name)
    shutil.copy(sorted(src.iterdir())[1], b / name)
    out = tmp_path / "out"
    argv = ["predict", str(a), str(b), "--model", str(tiny_checkpoint), "--runtime", "torch", "--out", str(out),
            "--json", str(tmp_path / "p.json")]
    assert main(argv) == 0
    outputs = json.loads((tmp_path / "p.json").read_text())["outputs"]
    stem = Path(name).stem
    assert sorted(outputs) == sorted([str(out / "a" / f"{stem}.png"), str(out / "b" / f"{stem}.png")])
    assert all(Path(p).is_file() for p in outputs)
    capsys.readouterr()
    assert main(argv) == 1
    assert "--overwrite" in _err_lines(capsys)[0]
    assert main([*argv, "--overwrite"]) == 0


def test_out_that_is_a_file_is_one_line(tiny_specs, tiny_checkpoint, tmp_path, capsys, monkeypatch) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    img = tmp_path / "i.png"
    Image.fromarray(np.zeros((64, 128, 3), np.uint8)).save(img)
    for argv in (_train_args(tiny_specs, afile),
                 ["predict", str(img), "--model", str(tiny_checkpoint), "--out", str(afile)],
                 ["data", "synthetic", "--out", str(afile / "sub"), "--counts", "1,1,1,1"]):
        assert main(argv) == 1, argv
        lines = _err_lines(capsys)
        assert len(lines) == 1 and "is a file" in lines[0] and str(afile) in lines[0], lines
    monkeypatch.setenv("DIGA_DATA_DIR", str(afile))
    assert main(["eval", "--model", str(tiny_checkpoint), "--data", "synthetic:target@val"]) == 1
    assert "DIGA_DATA_DIR" in _err_lines(capsys)[0]


# ------------------------------------------------------------------------------------------ paths, sizes
def test_dataset_specs_parse_from_the_right(tiny_benchmark, tmp_path) -> None:
    from diga_sdk.data.datasets import DatasetSpec, open_dataset, parse_dataset_spec

    assert parse_dataset_spec("gta5:/data/at@dir/x") == DatasetSpec("gta5", "/data/at@dir/x", "")
    assert parse_dataset_spec("cityscapes:/d/a@b@val") == DatasetSpec("cityscapes", "/d/a@b", "val")
    assert parse_dataset_spec("cityscapes:/d/x@final") == DatasetSpec("cityscapes", "/d/x@final", "")
    assert parse_dataset_spec("synthetic:target@val") == DatasetSpec("synthetic", "target", "val")
    assert parse_dataset_spec("synthetic") == DatasetSpec("synthetic", "", "")
    odd = tmp_path / "at@dir" / "x:y"
    shutil.copytree(tiny_benchmark / "source" / "train", odd)
    assert len(open_dataset(f"gta5:{odd}")) == 12
    shutil.copytree(tiny_benchmark / "target", tmp_path / "c@t")
    assert len(open_dataset(f"cityscapes:{tmp_path / 'c@t'}@val")) == 4


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_follow_the_umask(umask, tiny_checkpoint, tmp_path) -> None:
    from diga_sdk.io import atomic_write_bytes
    from diga_sdk.models.checkpoint import load_checkpoint, save_checkpoint

    old = os.umask(umask)
    try:
        model, meta = load_checkpoint(tiny_checkpoint)
        ckpt = save_checkpoint(model, tmp_path / "m.safetensors", meta)
        atomic_write_bytes(tmp_path / "m.onnx", b"bytes")
    finally:
        os.umask(old)
    for p in (ckpt, tmp_path / "m.onnx"):
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, (p, oct(p.stat().st_mode))


def test_predict_pixel_limit_names_the_variable(tiny_checkpoint, tmp_path, capsys, monkeypatch) -> None:
    big = tmp_path / "big.png"
    Image.new("L", (10000, 10000)).save(big)
    assert big.stat().st_size < 1_000_000
    assert main(["predict", str(big), "--model", str(tiny_checkpoint), "--runtime", "torch",
                 "--out", str(tmp_path / "o")]) == 1
    lines = _err_lines(capsys)
    assert len(lines) == 1 and "100000000" in lines[0] and "DIGA_MAX_PIXELS" in lines[0], lines
    small = tmp_path / "small.png"
    Image.new("RGB", (64, 64)).save(small)
    monkeypatch.setenv("DIGA_MAX_PIXELS", "1000")
    assert main(["predict", str(small), "--model", str(tiny_checkpoint), "--runtime", "torch",
                 "--out", str(tmp_path / "o2")]) == 1
    assert "limit of 1000 pixels (DIGA_MAX_PIXELS)" in _err_lines(capsys)[0]


def test_server_pixel_limit_over_pillows_own_limit_names_ours() -> None:
    import io

    from diga_sdk.serving.codecs import RequestError, decode_image

    buf = io.BytesIO()
    Image.new("1", (20000, 10000)).save(buf, format="PNG")  # 200 Mpx: over Pillow's 179 Mpx bomb limit
    with pytest.raises(RequestError) as err:
        decode_image(buf.getvalue(), 40_000_000)
    assert err.value.status == 413
    assert "200000000" in str(err.value) and "40000000" in str(err.value) and "DIGA_MAX_PIXELS" in str(err.value)


def test_chunked_body_over_the_limit_message() -> None:
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from diga_sdk.serving.middleware import GuardMiddleware

    app = Starlette()
    app.add_middleware(GuardMiddleware, api_token=None, max_body_bytes=1000)

    def chunks():
        for _ in range(5):
            yield b"y" * 300

    r = TestClient(app).post("/segment", content=chunks())
    assert r.status_code == 413
    assert r.json()["error"].startswith("request body exceeds the limit of 1000 bytes"), r.json()


def test_unloadable_model_message_says_why(tmp_path) -> None:
    from diga_sdk.errors import DigaError
    from diga_sdk.runtime.runtimes import open_runtime

    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(DigaError) as err:
        open_runtime(bad, "auto")
    assert "warnings above" not in str(err.value) and "onnxruntime:" in str(err.value)


def test_predict_url_to_a_dead_port_fails_with_a_connection_message(tmp_path, capsys) -> None:
    from diga_sdk.serving.launch import free_port

    img = tmp_path / "i.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    assert main(["predict", str(img), "--url", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path / "o")]) == 1
    lines = _err_lines(capsys)
    assert len(lines) == 1 and "cannot connect" in lines[0] and "token" not in lines[0], lines


def _imported_distributions(package: Path, optional: set[str]) -> set[str]:
    """Distributions of every third-party module the package's files import (any depth), minus `optional`."""
    import ast
    import importlib.metadata as md

    dists = md.packages_distributions()
    found: set[str] = set()
    for f in package.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in optional or top == "diga_sdk":
                    continue
                assert top in dists, f"{f.name} imports {top}, which no installed distribution provides"
                found |= {d.lower() for d in dists[top]}
    return found


def test_serve_extra_names_what_the_service_imports() -> None:
    """`pip install 'diga-sdk[serve]'` must bring every module the serving code imports (FastAPI was missing:
    flwr of the fleet extra happened to install it). Optional runtimes fail with a message naming their extra."""
    import re
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]

    def names(deps: list[str]) -> set[str]:
        return {re.split(r"[\[<>=;! ]", d, maxsplit=1)[0].lower() for d in deps}

    allowed = names(project["dependencies"]) | names(project["optional-dependencies"]["serve"])
    used = _imported_distributions(Path(__file__).parents[1] / "diga_sdk" / "serving",
                                   optional={"onnxruntime", "openvino", "tensorrt"})
    assert used <= allowed, sorted(used - allowed)
    assert "fastapi" in used
