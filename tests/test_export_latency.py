"""The latency harness: interleaved worker processes, percentiles, ratios, RSS, table and plot (tiny sizes;
the numbers themselves are measured by benchmarks/bench_latency.py, never asserted here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from diga_sdk.bench.latency import (
    ISA_FLAGS,
    Variant,
    add_ratios,
    cpu_isa_flags,
    library_versions,
    machine_info,
    markdown_table,
    measure,
    plot,
    prepare_variants,
)
from diga_sdk.errors import DigaError


def test_measure_interleaved_rows(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ck = str(tiny_checkpoint)
    variants = [Variant("torch-fp32", ck, "torch", "fp32"), Variant("torch-bf16", ck, "torch", "bf16"),
                Variant("broken", str(tmp_path / "missing.onnx"), "onnxruntime")]
    rows = measure(variants, [(32, 64)], [1, 2], runs=3, warmup=1, threads=1)
    ok = [r for r in rows if "p50_ms" in r]
    assert {(r["variant"], r["batch"]) for r in ok} == {(v, b) for v in ("torch-fp32", "torch-bf16") for b in (1, 2)}
    for r in ok:
        assert r["runs"] == 3 and 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["throughput_img_s"] == pytest.approx(1e3 * r["batch"] / r["p50_ms"])
        assert 50 < r["peak_rss_mib"] < 8000  # the worker's own peak (torch + model), not the parent's
    assert {r["runtime"] for r in ok} == {"torch (fp32)", "torch (bf16)"}
    broken = next(r for r in rows if r["variant"] == "broken")
    assert "not found" in broken["error"]
    add_ratios(rows)
    for r in ok:
        if r["variant"] == "torch-fp32":
            assert r["speedup_vs_eager"] == pytest.approx(1.0)
        assert r["time_vs_fastest"] >= 1.0
    result = {"rows": rows, "machine": machine_info()}
    table = markdown_table(result)
    assert table.count("| torch-") == 4 and "unavailable" in table and "ISA:" in table
    png = plot(result, tmp_path / "lat.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_machine_facts_and_path_names(tiny_checkpoint: Path, tmp_path: Path) -> None:
    flags = cpu_isa_flags()
    assert set(flags) <= set(ISA_FLAGS)
    versions = library_versions()
    assert versions["torch"] and versions["onnxruntime"] and "tensorrt" in versions
    with pytest.raises(DigaError, match="unknown latency path"):
        prepare_variants(tiny_checkpoint, tmp_path, calib="unused", include=["tflite"])
