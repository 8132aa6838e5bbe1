"""Peak memory of `diga train` against the dataset's size: the same 60-step run (batch 2, 256x512 crops,
light model) on 16 and on 160 full-resolution GTA5-layout images (1914x1052 PNGs with sensor noise,
25 of them without a label file as in the real download). Peak RSS summed over the process tree
(training process + loader workers), sampled every 50 ms, and the training process's own peak
(ru_maxrss). Memory must not grow with the dataset. JSON + markdown.

    python benchmarks/bench_train_memory.py [--small 16] [--large 160] [--steps 60] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from bench_loader import cpu_line  # noqa: E402


def run_train(data: Path, out: Path, steps: int) -> dict:
    cmd = [sys.executable, "-m", "diga_sdk.cli", "train", "--data", f"gta5:{data}", "--out", str(out),
           "--steps", str(steps), "--batch-size", "2", "--set", "crop=[256, 512]", "--set", "checkpoint_every=1000"]
    env = {**os.environ, "DIGA_NO_PROGRESS": "1"}
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"tree": 0, "main": 0}

    def sample() -> None:
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                main = p.memory_info().rss
                tree = main + sum(c.memory_info().rss for c in p.children(recursive=True))
            except psutil.Error:
                continue
            peak["tree"], peak["main"] = max(peak["tree"], tree), max(peak["main"], main)
            time.sleep(0.05)

    th = threading.Thread(target=sample)
    th.start()
    log, _ = proc.communicate()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"diga train failed ({proc.returncode}):\n{log}")
    flat = " ".join(log.split())  # the console handler wraps long lines
    at = flat.find("have no label")
    skipped = [flat[max(0, flat.rfind("WARNING", 0, at)):flat.find("skipped", at) + 7]] if at >= 0 else []
    return {"peak_rss_tree_mb": round(peak["tree"] / 2**20), "peak_rss_main_mb": round(peak["main"] / 2**20),
            "seconds": round(time.time() - t0, 1), "missing_label_warning": skipped[0].strip() if skipped else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=16)
    ap.add_argument("--large", type=int, default=160)
    ap.add_argument("--missing", type=int, default=25)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/train_memory.json"))
    args = ap.parse_args()
    from diga_sdk.data.layouts import GTA5_MISSING_LABELS, GTA5_SIZE, write_gta5

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small = write_gta5(tmp / "small", args.small, GTA5_SIZE)
        first = GTA5_MISSING_LABELS[0] - 2
        # the download's own gaps (2154-2158, ...) lie too far apart for 160 consecutive frames to hold 25 of
        # them: spread `--missing` gaps evenly over the written ids instead
        step = max(1, args.large // max(1, args.missing))
        missing = [first + k * step for k in range(args.missing)]
        large = write_gta5(tmp / "large", args.large, GTA5_SIZE, first_id=first, without_label=missing)
        gb = sum(p.stat().st_size for p in large.rglob("*.png")) / 2**30
        runs = {"small": run_train(small, tmp / "run_small", args.steps),
                "large": run_train(large, tmp / "run_large", args.steps)}
    growth = runs["large"]["peak_rss_tree_mb"] - runs["small"]["peak_rss_tree_mb"]
    result = {"machine": {"cpu": cpu_line()},
              "setting": {"steps": args.steps, "batch": 2, "crop": [256, 512], "model": "light",
                          "images": {"small": args.small, "large": args.large}, "without_label": args.missing,
                          "image_size": list(GTA5_SIZE), "large_dataset_gb": round(gb, 2)},
              "runs": runs, "growth_mb": growth}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    table = ("| images | peak RSS, tree (MB) | peak RSS, training process (MB) | seconds |\n|---:|---:|---:|---:|\n" +
             "".join(f"| {result['setting']['images'][k]} | {r['peak_rss_tree_mb']} | {r['peak_rss_main_mb']} | "
                     f"{r['seconds']} |\n" for k, r in runs.items()) + f"\ngrowth {growth} MB ({cpu_line()})\n")
    args.json.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
