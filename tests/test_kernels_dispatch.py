"""Backend choice, the forced reference, the missing-Triton fallback, lazy imports and input errors."""

from __future__ import annotations

import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from diga_sdk import kernels
from diga_sdk.errors import DigaError
from diga_sdk.kernels import ops


def _on(device: str) -> SimpleNamespace:
    return SimpleNamespace(device=torch.device(device))  # only .device is consulted: no GPU needed


def test_auto_picks_by_device(monkeypatch):
    monkeypatch.delenv("DIGA_KERNELS", raising=False)
    assert kernels.backend_for(torch.zeros(1)) == "cpu"
    monkeypatch.setattr(ops, "_installed", lambda name: True)
    assert kernels.backend_for(_on("cuda")) == "triton"
    assert kernels.backend_for(torch.zeros(1, device="meta")) == "reference"


def test_env_forces_reference_everywhere(monkeypatch):
    monkeypatch.setenv("DIGA_KERNELS", "reference")
    assert kernels.backend_for(torch.zeros(1)) == "reference"
    assert kernels.backend_for(_on("cuda")) == "reference"
    calls = []
    monkeypatch.setattr(ops.ref, "centroid_sums_ref", lambda *a: calls.append(a) or ("sums", "counts"))
    assert kernels.centroid_sums(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long), 4) == ("sums", "counts")
    assert len(calls) == 1


def test_cuda_without_triton_falls_back_with_one_warning(monkeypatch, caplog):
    monkeypatch.delenv("DIGA_KERNELS", raising=False)
    monkeypatch.setattr(ops, "_installed", lambda name: name != "triton")
    monkeypatch.setattr(ops, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="diga_sdk.kernels.ops"):
        assert kernels.backend_for(_on("cuda")) == "reference"
        assert kernels.backend_for(_on("cuda")) == "reference"
    warnings = [r for r in caplog.records if "triton is not installed" in r.getMessage()]
    assert len(warnings) == 1
    assert kernels.backend_for(torch.zeros(1)) == "cpu"  # the CPU path does not need Triton


def test_bad_backend_settings_are_user_errors(monkeypatch):
    monkeypatch.setenv("DIGA_KERNELS", "fastest")
    with pytest.raises(DigaError, match="DIGA_KERNELS"):
        kernels.backend_for(torch.zeros(1))
    monkeypatch.setenv("DIGA_KERNELS", "cpu")
    with pytest.raises(DigaError, match="on cuda"):
        kernels.backend_for(_on("cuda"))
    monkeypatch.setenv("DIGA_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(DigaError, match="TRITON_INTERPRET=1"):
        kernels.backend_for(torch.zeros(1))


def test_import_loads_neither_triton_nor_numba():
    code = ("import sys, diga_sdk.kernels as k; "
            "print(sorted(m for m in ('triton', 'numba', 'diga_sdk.kernels.triton_ops', 'diga_sdk.kernels.cpu_numba') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("call,match", [
    (lambda: kernels.consensus_select(torch.zeros(1, 4, 4), torch.zeros(1, 2, 2, 2), torch.zeros(3, 2)),
     "pseudo_labels must be an integer"),
    (lambda: kernels.consensus_select(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 2, 2, 2), torch.zeros(3, 5)),
     "centroids must be"),
    (lambda: kernels.consensus_select(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(1, 2, 2, 2), torch.zeros(3, 2)),
     "batch"),
    (lambda: kernels.class_mix(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5), torch.zeros(1, 4, 4, dtype=torch.long),
                               torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 3, dtype=torch.bool)), "img_a and img_b"),
    (lambda: kernels.class_mix(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long),
                               torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 3)), "chosen must be a bool"),
    (lambda: kernels.centroid_sums(torch.zeros(1, 8, 4, 4), torch.zeros(1, 16, 16, dtype=torch.long), 3),
     "feature resolution"),
    (lambda: kernels.symmetric_distillation_loss(torch.zeros(3, 4, 2, 2), torch.zeros(3, 4, 2, 2)), "even batch"),
    (lambda: kernels.choose_classes(torch.zeros(1, 4, 4), 3), "integer label"),
])
def test_bad_inputs_raise_one_clear_error(call, match):
    with pytest.raises(DigaError, match=match):
        call()


def test_inputs_that_require_grad_are_accepted_and_outputs_carry_none(monkeypatch):
    monkeypatch.setenv("DIGA_KERNELS", "cpu")
    features = torch.randn(1, 8, 3, 4, requires_grad=True)
    centroids = torch.randn(5, 8, requires_grad=True)
    labels = torch.randint(0, 5, (1, 3, 4))
    sums, counts = kernels.centroid_sums(features, labels, 5)
    kept = kernels.consensus_select(torch.randint(0, 5, (1, 7, 9)), features, centroids)
    assert not sums.requires_grad and counts.sum().item() == 12 and kept.shape == (1, 7, 9)


def test_bench_kernels_cli_writes_json_and_table(tmp_path):
    import json

    from diga_sdk.cli import main

    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    assert main(["bench", "kernels", "--shapes", "tiny", "--repeats", "1", "--post-size", "64x128", "--json", str(out),
                 "--markdown", str(md)]) == 0
    result = json.loads(out.read_text())
    ops_seen = {r["op"] for r in result["results"]}
    assert ops_seen == {"consensus_select", "class_mix", "choose_classes", "centroid_sums", "symmetric_distillation_loss",
                        "upsample_argmax"}
    for r in result["results"]:
        assert r["ms"]["fast"] > 0 and r["floor_ms"] > 0 and r["bytes_moved"] > 0
        assert r["fast_over_memory_floor"] == r["ms"]["fast"] / r["memory_floor_ms"]
    post = [r for r in result["results"] if r["op"] == "upsample_argmax"]
    assert {r["logits"] for r in post} == {"random", "segmenter_like"} and all(r["shape"] == "64x128" for r in post)
    assert all(r["mismatches_vs_reference"] == 0 for r in post)
    assert set(result["summary"]) == {"upsample_argmax_speedup_random", "upsample_argmax_speedup_segmenter_like"}
    assert result["env"]["cpu"] and result["machine_rates"]["copy_fresh_gbps"] > 0
    assert "isa_flags" in result["env"]
    text = md.read_text()
    assert "| tiny | class_mix |" in text and "upsample_argmax (random logits)" in text and "Machine: " in text
    assert main(["bench", "kernels", "--shapes", "huge"]) == 1  # a DigaError, one line
    assert main(["bench", "kernels", "--shapes", "tiny", "--ops", "consensus_select,argmax"]) == 1
    assert main(["bench", "kernels", "--shapes", "tiny", "--ops", "class_mix", "--repeats", "1", "--json", str(out)]) == 0
    assert [r["op"] for r in json.loads(out.read_text())["results"]] == ["class_mix"]
