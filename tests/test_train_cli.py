"""Supervised trainer (determinism, crash-resume) and the CLI end to end on a tiny benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from diga_sdk.adapt import supervised
from diga_sdk.cli import main
from diga_sdk.config import TrainConfig


def _cfg(specs: dict[str, str], **kw) -> TrainConfig:
    base = dict(train_data=specs["source_train"], val_data=[specs["target_val"]], steps=4, batch_size=2,
                crop=(64, 96), scale=(0.75, 1.0), checkpoint_every=2)
    return TrainConfig(**{**base, **kw})


def test_same_seed_same_weights_and_resume_after_crash(tiny_specs, tmp_path, monkeypatch) -> None:
    a = load_file(str(supervised.train_supervised(_cfg(tiny_specs), tmp_path / "a")))
    b = load_file(str(supervised.train_supervised(_cfg(tiny_specs), tmp_path / "b")))
    assert all(torch.equal(a[k], b[k]) for k in a)

    calls = {"n": 0}
    real_loss = supervised.seg_loss

    def crash_on_fourth(logits, labels, kind="ce"):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return real_loss(logits, labels, kind)

    monkeypatch.setattr(supervised, "seg_loss", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        supervised.train_supervised(_cfg(tiny_specs), tmp_path / "c")
    assert not (tmp_path / "c" / "model.safetensors").exists()
    assert json.loads((tmp_path / "c" / "state" / "train_state.json").read_text())["step"] == 2
    monkeypatch.setattr(supervised, "seg_loss", real_loss)
    c = load_file(str(supervised.train_supervised(_cfg(tiny_specs), tmp_path / "c", resume=True)))
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_cli_data_train_eval(tiny_specs, tmp_path, capsys) -> None:
    assert main(["data", "synthetic", "--out", str(tmp_path / "bench"), "--size", "48x96", "--counts", "2,1,2,1",
                 "--workers", "1"]) == 0
    assert (tmp_path / "bench" / "target" / "gtFine" / "val").is_dir()
    cfg = _cfg(tiny_specs, steps=2).model_dump(mode="json")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run")]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["steps"] == 2 and saved["train_data"] == tiny_specs["source_train"]
    ckpt = tmp_path / "run" / "model.safetensors"
    assert main(["eval", "--model", str(ckpt), "--data", tiny_specs["target_val"], "--json", str(tmp_path / "e.json")]) == 0
    res = json.loads((tmp_path / "e.json").read_text())[tiny_specs["target_val"]]
    assert 0.0 <= res["miou"] <= 100.0 and set(res["per_class"]) >= {"road", "sky", "car"}


def test_cli_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "diga_sdk.cli", "eval", "--model", str(tmp_path / "none.safetensors"),
                           "--data", "synthetic:target@val"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "none.safetensors not found" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "diga_sdk.cli", "data", "synthetic", "--out", str(tmp_path / "x"),
                           "--counts", "1,2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "--counts" in proc.stderr and "Traceback" not in proc.stderr


def test_import_does_not_load_extras() -> None:
    code = ("import sys, diga_sdk, diga_sdk.cli; bad = [m for m in ('onnx', 'onnxruntime', 'bentoml', 'triton', "
            "'openvino', 'flwr', 'tensorrt') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
