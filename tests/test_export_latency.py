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


def test_efficiency_and_acceptance_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GFLOP/s and share of the measured peak per row; a reduced path is accepted only with a check within
    the drop; auto is compared with the fastest accepted path, not with a faster unaccepted one."""
    from diga_sdk.bench.latency import add_acceptance, add_efficiency, matmul_peak_gflops
    from diga_sdk.runtime.checked import AccuracyCheck, artefact_sha256, record_check

    monkeypatch.setenv("DIGA_CACHE_DIR", str(tmp_path / "cache"))
    peak = matmul_peak_gflops(threads=1, n=256, repeats=2)
    assert 0.1 < peak < 1e5
    int8, ov8 = tmp_path / "int8.onnx", tmp_path / "int8.xml"
    int8.write_bytes(b"int8 graph")
    ov8.write_bytes(b"ir")
    record_check(int8, AccuracyCheck(path_name="onnxruntime-int8", runtime="onnxruntime",
                                     artefact_sha256=artefact_sha256(int8), source_checkpoint_hash="abc",
                                     reference="torch (fp32)", reference_miou=40.0, miou=39.7, miou_change=-0.3,
                                     val="synthetic:target@val", images=8, measured_by="test"))
    variants = [Variant("onnxruntime-fp32", "x.onnx", "onnxruntime"), Variant("onnxruntime-int8", str(int8), "onnxruntime"),
                Variant("openvino-int8", str(ov8), "openvino"), Variant("auto", "x.safetensors", "auto")]
    rows = [{"variant": v, "runtime": v, "size": "64x128", "batch": 2, "p50_ms": ms, "p90_ms": ms, "p99_ms": ms,
             "throughput_img_s": 2e3 / ms, "peak_rss_mib": 100.0, "choice": {"picked": "onnxruntime-int8"}}
            for v, ms in [("onnxruntime-fp32", 40.0), ("onnxruntime-int8", 20.0), ("openvino-int8", 10.0),
                          ("auto", 21.0)]]
    add_ratios(rows)
    add_efficiency(rows, {"64x128": 0.5}, peak=100.0)
    assert rows[0]["achieved_gflops_s"] == pytest.approx(0.5 * 2 / 0.040) and rows[0]["share_of_peak"] == pytest.approx(0.25)
    add_acceptance(rows, variants, max_miou_drop=0.5)
    by = {r["variant"]: r for r in rows}
    assert by["onnxruntime-fp32"]["accepted"] and by["onnxruntime-int8"]["accepted"]
    assert by["openvino-int8"]["accepted"] is False and "not checked" in by["openvino-int8"]["accuracy"]
    assert by["auto"]["fastest_accepted"] == "onnxruntime-int8"
    assert by["auto"]["time_vs_fastest_accepted"] == pytest.approx(21 / 20)
    add_acceptance(rows, variants, max_miou_drop=0.2)  # a tighter budget turns the -0.3 INT8 down
    assert by["onnxruntime-int8"]["accepted"] is False and by["auto"]["fastest_accepted"] == "onnxruntime-fp32"
    table = markdown_table({"rows": rows, "machine": {**machine_info(), "peak_gflops": 100.0},
                            "model_gflops": {"64x128": 0.5}, "max_miou_drop": 0.2})
    assert "share of peak" in table and "25 %" in table and "fp32 peak 100 GFLOP/s" in table
    assert "no (-0.30 mIoU)" in table and "took onnxruntime-int8" in table


@pytest.mark.slow
def test_bench_latency_cli_states_flops_peak_and_accepted_paths(tiny_checkpoint: Path, tiny_specs: dict[str, str],
                                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`diga bench latency --val`: checks the INT8 path's accuracy first, then every row carries GFLOP/s, share of
    the measured peak and `accepted`; auto is compared with the fastest accepted path and its times are recorded."""
    import json

    from diga_sdk.cli import main
    from diga_sdk.runtime.checked import read_checks

    monkeypatch.setenv("DIGA_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "lat.json"
    assert main(["bench", "latency", "--model", str(tiny_checkpoint), "--sizes", "32x64", "--runs", "2", "--warmup",
                 "1", "--threads", "1", "--paths", "torch-fp32,onnxruntime-fp32,onnxruntime-int8,auto",
                 "--calib", tiny_specs["target_train"], "--calib-images", "2", "--val", tiny_specs["target_val"],
                 "--val-limit", "2", "--work", str(tmp_path / "work"), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["model_gflops"]["32x64"] > 0 and res["machine"]["peak_gflops"] > 0
    rows = {r["variant"]: r for r in res["rows"]}
    for r in rows.values():
        assert r["achieved_gflops_s"] == pytest.approx(res["model_gflops"]["32x64"] / (r["p50_ms"] / 1e3))
        assert r["share_of_peak"] == pytest.approx(r["achieved_gflops_s"] / res["machine"]["peak_gflops"])
    int8 = rows["onnxruntime-int8"]
    check = read_checks(next((tmp_path / "work").glob("*/int8.onnx")))["onnxruntime-int8"]
    assert int8["miou_change"] == pytest.approx(check.miou_change) and check.images == 2
    assert int8["accepted"] == (check.miou_change >= -0.5) and rows["torch-fp32"]["accepted"] is True
    auto = rows["auto"]
    accepted = [r for r in rows.values() if r.get("accepted")]
    assert auto["fastest_accepted"] == min(accepted, key=lambda r: r["p50_ms"])["variant"]
    assert auto["picked"] in {"torch-fp32", "onnxruntime-fp32", "openvino-fp32"} | {r["variant"] for r in accepted}
    recorded = json.loads((tmp_path / "cache" / "runtime-choices.json").read_text())
    assert set(next(iter(recorded.values()))["ms"]) == {r["variant"] for r in accepted}
