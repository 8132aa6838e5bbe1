"""Two (or more) models side by side in one run: every deployment path of each, timed interleaved in one
harness (so load drifts hit all alike), with each model's GFLOPs, the machine's measured fp32 matmul
peak, each path's share of it, which reduced-precision paths are accepted (checked mIoU change within
--max-miou-drop) and where `auto` lands against the fastest accepted path. The verdicts: each model's
fastest fp32 path against the first model's, and auto / fastest accepted per model.

    python benchmarks/bench_models.py --model light=runs/ablation/diga/selftrain_round2/model.safetensors \
        --model fast=runs/ablation_fast/diga/selftrain_round2/model.safetensors \
        [--sizes 512x1024] [--runs 20] [--threads 2] [--val synthetic:target@val] [--val-limit 40]

Writes benchmarks/results/models_latency.json and .md (override with --json).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PATHS = ("torch-fp32", "onnxruntime-fp32", "openvino-fp32", "onnxruntime-int8", "openvino-int8", "auto")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT (repeat; the first is the base)")
    p.add_argument("--sizes", default="512x1024")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--paths", default=",".join(PATHS))
    p.add_argument("--val", default="synthetic:target@val", help="labelled spec for the accuracy checks ('' = none)")
    p.add_argument("--val-limit", type=int, default=None)
    p.add_argument("--calib", default="synthetic:target@train")
    p.add_argument("--calib-images", type=int, default=32)
    p.add_argument("--max-miou-drop", type=float, default=0.5)
    p.add_argument("--work", default=None, help="folder for the exported files (default: the cache)")
    p.add_argument("--json", default="benchmarks/results/models_latency.json")
    a = p.parse_args(argv)
    os.environ.setdefault("DIGA_NO_PROGRESS", "1")

    from diga_sdk.bench.latency import (
        FP32_PATHS,
        Variant,
        _record_fastest,
        add_acceptance,
        add_efficiency,
        add_ratios,
        checkpoint_gflops,
        machine_info,
        matmul_peak_gflops,
        measure,
        prepare_variants,
    )
    from diga_sdk.bench.precision import check_variants
    from diga_sdk.io import atomic_write_bytes, atomic_write_json
    from diga_sdk.runtime.cache import cache_dir

    models = dict(m.split("=", 1) for m in a.model)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in a.sizes.split(",")]
    work = Path(a.work) if a.work else cache_dir() / "bench"
    machine = machine_info()
    own: dict[str, list[Variant]] = {}
    for name, ckpt in models.items():
        own[name] = prepare_variants(ckpt, work, calib=a.calib, calib_images=a.calib_images,
                                     include=a.paths.split(","), max_miou_drop=a.max_miou_drop)
        if a.val:
            check_variants(ckpt, own[name], a.val, limit=a.val_limit, threads=a.threads, measured_by="bench_models")
    tagged = [Variant(f"{name}/{v.name}", v.path, v.runtime, v.precision, v.device, v.note, v.extra)
              for name, vs in own.items() for v in vs]
    peak_before = matmul_peak_gflops(a.threads)
    rows = measure(tagged, sizes, [1], runs=a.runs, warmup=a.warmup, threads=a.threads)
    peak_after = matmul_peak_gflops(a.threads)
    peak = max(peak_before, peak_after)
    machine.update({"peak_gflops": peak, "peak_gflops_runs": {"before": peak_before, "after": peak_after,
                                                              "threads": a.threads},
                    "load_average_end": list(os.getloadavg())})
    result: dict = {"models": {}, "sizes": a.sizes.split(","), "runs": a.runs, "threads": a.threads,
                    "max_miou_drop": a.max_miou_drop, "machine": machine, "rows": []}
    for name, ckpt in models.items():
        mine = [dict(r, model=name, variant=r["variant"].split("/", 1)[1]) for r in rows
                if r["variant"].startswith(name + "/")]
        gflops = checkpoint_gflops(ckpt, sizes)
        add_ratios(mine)
        add_efficiency(mine, gflops, peak)
        add_acceptance(mine, own[name], a.max_miou_drop)
        _record_fastest(ckpt, mine, "cpu")
        result["models"][name] = {"checkpoint": ckpt, "model_gflops": gflops}
        result["rows"] += mine
    base = next(iter(models))
    verdicts = {}
    for size in result["sizes"]:
        fastest = {m: min((r for r in result["rows"] if r["model"] == m and r.get("size") == size
                           and r["variant"] in FP32_PATHS and "p50_ms" in r), key=lambda r: r["p50_ms"], default=None)
                   for m in models}
        for m, r in fastest.items():
            auto = next((x for x in result["rows"] if x["model"] == m and x.get("size") == size
                         and x["variant"] == "auto" and "p50_ms" in x), None)
            verdicts[f"{m}@{size}"] = {
                "fastest_fp32": r and r["variant"], "fastest_fp32_ms": r and r["p50_ms"],
                "fastest_fp32_vs_" + base: (r["p50_ms"] / fastest[base]["p50_ms"]) if r and fastest[base] else None,
                "auto_picked": auto and auto.get("picked"), "auto_vs_fastest_accepted":
                    auto and auto.get("time_vs_fastest_accepted"), "fastest_accepted": auto and auto.get("fastest_accepted")}
    result["verdicts"] = verdicts
    atomic_write_json(a.json, result)
    md = _table(result)
    atomic_write_bytes(Path(a.json).with_suffix(".md"), md.encode())
    print(md)
    return 0


def _table(result: dict) -> str:
    m = result["machine"]
    lines = [f"Models side by side, {result['threads']} thread(s), {result['runs']} interleaved runs per path; CPU "
             f"{m['cpu']} ({m['cores']} cores, {' '.join(m['isa_flags'])}); fp32 matmul peak {m['peak_gflops']:.0f} "
             f"GFLOP/s; load average {m['load_average'][0]:.1f} at start, {m['load_average_end'][0]:.1f} at end", "",
             "| model | path | runtime | size | GFLOP | p50 ms | p90 ms | GFLOP/s | share of peak | accepted |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in sorted(result["rows"], key=lambda r: (r["model"], r.get("size", ""), r.get("p50_ms", 1e18))):
        if "p50_ms" not in r:
            lines.append(f"| {r['model']} | {r['variant']} | unavailable: {r.get('error', '')[:60]} | | | | | | | |")
            continue
        acc = (f"took {r.get('picked')}, {r['time_vs_fastest_accepted']:.2f}x fastest accepted"
               if r["variant"] == "auto" and r.get("time_vs_fastest_accepted") else
               {True: "yes", False: "no", None: "-"}[r.get("accepted")]
               + (f" ({r['miou_change']:+.2f} mIoU)" if r.get("miou_change") is not None else ""))
        lines.append(f"| {r['model']} | {r['variant']} | {r['runtime']} | {r['size']} | {r['model_gflops']:.1f} | "
                     f"{r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['achieved_gflops_s']:.1f} | "
                     f"{100 * r['share_of_peak']:.0f} % | {acc} |")
    lines += ["", "| model@size | fastest fp32 | ms | vs base | auto took | auto / fastest accepted |",
              "|---|---|---:|---:|---|---:|"]
    for k, v in result["verdicts"].items():
        ratio = next((x for key, x in v.items() if key.startswith("fastest_fp32_vs_")), None)
        lines.append(f"| {k} | {v['fastest_fp32']} | {v['fastest_fp32_ms'] or 0:.1f} | "
                     f"{ratio if ratio is None else f'{ratio:.3f}'} | {v['auto_picked']} | "
                     f"{v['auto_vs_fastest_accepted'] if v['auto_vs_fastest_accepted'] is None else round(v['auto_vs_fastest_accepted'], 3)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
