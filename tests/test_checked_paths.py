"""Accuracy-checked deployment paths: `diga export --val` writes an artefact's measured mIoU change into
its sidecar, a changed artefact loses its check, and `runtime="auto"` takes a reduced-precision path
only when its change is within --max-miou-drop (falling back to fp32 otherwise)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from diga_sdk.errors import DigaError
from diga_sdk.models.checkpoint import checkpoint_hash
from diga_sdk.runtime.checked import checked_paths, read_checks, record_check, sidecar_path


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("DIGA_CACHE_DIR", str(d))
    return d


@pytest.fixture()
def int8_export(tiny_checkpoint: Path, tiny_specs: dict[str, str], tmp_path: Path, cache: Path) -> tuple[Path, dict]:
    """`diga export --format onnx-int8 --val ...`: the export and its JSON report."""
    from diga_sdk.cli import main

    out, report = tmp_path / "m.int8.onnx", tmp_path / "report.json"
    assert main(["export", "--model", str(tiny_checkpoint), "--format", "onnx-int8", "--out", str(out),
                 "--parity-data", tiny_specs["target_val"], "--parity-images", "1", "--calib",
                 tiny_specs["target_train"], "--calib-images", "4", "--val", tiny_specs["target_val"],
                 "--json", str(report)]) == 0
    return out, json.loads(report.read_text())


@pytest.mark.slow
def test_export_check_then_auto_accepts_within_the_drop_rejects_beyond_and_a_changed_file_loses_it(
        int8_export, tiny_checkpoint: Path) -> None:
    from diga_sdk.runtime.runtimes import open_runtime

    out, report = int8_export
    checks = read_checks(out)
    assert set(checks) == {"onnxruntime-int8"}
    measured = checks["onnxruntime-int8"]
    change = report["accuracy"]["change"]
    assert measured.miou_change == pytest.approx(change["delta"]) and measured.miou == pytest.approx(change["miou"])
    assert measured.source_checkpoint_hash == checkpoint_hash(tiny_checkpoint) and measured.images == 4
    assert report["accuracy_sidecar"] == str(sidecar_path(out.resolve()))
    assert [(f, k.path_name) for f, k in checked_paths(checkpoint_hash(tiny_checkpoint))] == [
        (out.resolve(), "onnxruntime-int8")]

    # auto: the checked INT8 is a candidate when its measured change is within the drop
    rt = open_runtime(tiny_checkpoint, "auto", max_miou_drop=max(0.0, -measured.miou_change) + 1.0)
    assert "onnxruntime-int8" in rt.choice["ms"] and rt.choice["accepted"] == {
        "onnxruntime-int8": pytest.approx(measured.miou_change)}
    assert rt.choice["picked"] == min(rt.choice["ms"], key=rt.choice["ms"].__getitem__)
    # the same artefact recorded as losing 5 points (a badly calibrated INT8): auto must not take it
    record_check(out, measured.model_copy(update={"miou": measured.reference_miou - 5.0, "miou_change": -5.0}))
    rt = open_runtime(tiny_checkpoint, "auto", max_miou_drop=0.5)
    assert rt.choice["rejected"] == {"onnxruntime-int8": -5.0} and rt.precision == "fp32"
    assert set(rt.choice["ms"]) == {"torch-fp32", "onnxruntime-fp32", "openvino-fp32"}
    assert rt.choice["reason"] == "recorded measurement"
    loose = open_runtime(tiny_checkpoint, "auto", max_miou_drop=6.0)  # a looser budget accepts it again
    assert "onnxruntime-int8" in loose.choice["ms"] and loose.choice["rejected"] == {}
    assert loose.predict(np.zeros((1, 64, 128, 3), np.uint8)).shape == (1, 64, 128)
    with pytest.raises(DigaError, match="max-miou-drop"):
        open_runtime(tiny_checkpoint, "auto", max_miou_drop=-1.0)

    # the same bytes under a new name carry no sidecar; bytes changed under the old name void the check
    shutil.copy(out, out.with_name("copy.onnx"))
    assert read_checks(out.with_name("copy.onnx")) == {}
    with open(out, "ab") as f:
        f.write(b"\0")
    assert read_checks(out) == {} and checked_paths(checkpoint_hash(tiny_checkpoint)) == []
    rt = open_runtime(tiny_checkpoint, "auto", max_miou_drop=6.0)  # nothing checked any more: fp32 only
    assert set(rt.choice["ms"]) == {"torch-fp32", "onnxruntime-fp32", "openvino-fp32"}
