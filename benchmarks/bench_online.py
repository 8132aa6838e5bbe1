"""Per-frame cost of online adaptation on this CPU: the shipped model predicting alone (adaptation
off), the adapter updating on every frame (on), and the adapter under a per-frame budget (the budget
planner's p99 against the budget). Median / p90 / p99 ms per frame and peak RSS per mode (each mode in
its own process, so RSS is its own); JSON + a markdown table. Several models and sizes in one run
(`--model NAME=CKPT` repeated, `--size` comma-separated, one `--budget-ms` per size) compare side by side.

    python benchmarks/bench_online.py --model CKPT [--size 256x512] [--frames 40] [--budget-ms 400] [--config YAML]
    python benchmarks/bench_online.py --model light=CKPT_A --model fast=CKPT_B --size 256x512,512x1024 \
        --budget-ms 400,1200 --json benchmarks/results/online_models.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path


def _run_mode(args: dict, mode: str, queue) -> None:  # noqa: ANN001
    os.environ.setdefault("DIGA_NO_PROGRESS", "1")
    import numpy as np
    import torch

    torch.set_num_threads(args["threads"])
    from diga_sdk.data.streams import FrameStream
    from diga_sdk.data.transforms import to_tensor
    from diga_sdk.evaluate import predict_labels
    from diga_sdk.models.checkpoint import load_checkpoint
    from diga_sdk.online.adapter import OnlineConfig, open_adapter
    from diga_sdk.results import peak_rss_mib

    h, w = args["size"]
    frames = [f.image for f in FrameStream("scenario:target", args["frames"] + args["warmup"], (h, w), seed=5)]
    times, actions, predict, scales = [], [], [], []
    if mode == "off":
        model, meta = load_checkpoint(args["model"])
        with torch.no_grad():
            for img in frames:  # as the SDK predicts: the fused upsample-argmax, as the adapter does too
                t0 = time.perf_counter()
                predict_labels(model, to_tensor(img)[None], meta.mean, meta.std)
                times.append((time.perf_counter() - t0) * 1e3)
    else:
        budget = args["budget_ms"] if mode == "budget" else None
        from diga_sdk.config import load_config

        cfg = load_config(args["config"], OnlineConfig, {"budget_ms": budget, "safety.calib_frames": 3})
        ad = open_adapter(args["model"], cfg)
        for img in frames:
            r = ad.process(img)
            times.append(r.total_ms)
            predict.append(r.predict_ms)
            if r.action == "update":
                scales.append(r.crop_scale)
            actions.append(r.action)
    t = np.asarray(times[args["warmup"]:])
    acts = actions[args["warmup"]:]
    pr = np.asarray(predict[args["warmup"]:]) if predict else t
    budget = args["budget_ms"] if mode == "budget" else None
    queue.put({"model": args["name"], "size": f"{h}x{w}", "mode": mode, "budget_ms": args["budget_ms"] if mode == "budget" else None, "frames": int(t.size),
               "median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
               "p99_ms": float(np.percentile(t, 99)), "max_ms": float(t.max()), "peak_rss_mb": peak_rss_mib(),
               "updates": acts.count("update"), "skipped_for_budget": acts.count("skip-budget"),
               "predict_median_ms": float(np.median(pr)), "predict_p99_ms": float(np.percentile(pr, 99)),
               "frames_over_budget": int((t > budget).sum()) if budget is not None else None,
               "update_crop_scales": sorted(set(scales)) if scales else []})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, action="append", help="CKPT or NAME=CKPT (repeat to compare)")
    p.add_argument("--size", default="256x512")
    p.add_argument("--frames", type=int, default=40, help="timed frames per mode (after --warmup calibration frames)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--budget-ms", default="400", help="per-frame budget, one per --size (comma-separated)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--config", default=None, help="YAML with OnlineConfig settings (e.g. docs/online/anchored.yaml)")
    p.add_argument("--json", default="runs/bench/online.json")
    a = p.parse_args(argv)
    sizes = [tuple(int(v) for v in sz.lower().split("x")) for sz in a.size.split(",")]
    budgets = [float(b) for b in a.budget_ms.split(",")]
    if len(budgets) == 1:
        budgets *= len(sizes)
    if len(budgets) != len(sizes):
        p.error("give one --budget-ms per --size")
    models = [m.split("=", 1) if "=" in m else (Path(m).parent.name or "model", m) for m in a.model]
    from diga_sdk.io import atomic_write_bytes, atomic_write_json
    from diga_sdk.results import env_info

    ctx = mp.get_context("spawn")
    rows = []
    load_start = os.getloadavg()
    for (h, w), budget in zip(sizes, budgets, strict=True):
        for name, ckpt in models:  # models alternate within a size: load drifts hit both
            args = {"name": name, "model": ckpt, "size": (h, w), "frames": a.frames, "warmup": a.warmup,
                    "budget_ms": budget, "threads": a.threads, "config": a.config}
            group = []
            for mode in ("off", "on", "budget"):
                q = ctx.Queue()
                proc = ctx.Process(target=_run_mode, args=(args, mode, q))
                proc.start()
                group.append(q.get())
                proc.join()
                print(json.dumps(group[-1]), file=sys.stderr)
            off = group[0]["median_ms"]
            for r in group:
                r["median_vs_off"] = r["median_ms"] / off
            group[2]["p99_within_budget"] = group[2]["p99_ms"] <= group[2]["budget_ms"]
            rows += group
    result = {"sizes": [list(s) for s in sizes], "models": dict(models), "config": a.config, "rows": rows,
              "env": env_info(), "threads": a.threads,
              "note": "wall time per frame incl. prediction; the load average before and after is recorded",
              "loadavg": os.getloadavg(), "loadavg_start": load_start}
    atomic_write_json(a.json, result)
    lines = [f"Per-frame cost, {', '.join(n for n, _ in models)}, {a.size}, {a.threads} thread(s), load avg "
             f"{load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end", "",
             "| model | size | mode | budget ms | median ms | p90 ms | p99 ms | max ms | predict p99 ms | peak RSS MiB | "
             "updates | skipped (budget) | frames over budget | median / off |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        over = "-" if r["frames_over_budget"] is None else r["frames_over_budget"]
        lines.append(f"| {r['model']} | {r['size']} | {r['mode']} | {r['budget_ms'] or '-'} | {r['median_ms']:.1f} | "
                     f"{r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['predict_p99_ms']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['updates']} | {r['skipped_for_budget']} | {over} | "
                     f"{r['median_vs_off']:.2f} |")
    md = "\n".join(lines) + "\n"
    atomic_write_bytes(Path(a.json).with_suffix(".md"), md.encode())
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
