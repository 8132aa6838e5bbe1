"""Smoke run of the authors' recipe at real size on this CPU: `diga adapt --preset gta5-cityscapes`
(DeepLabV2-ResNet101, the authors' head) with every stage's steps set to 2, on full-resolution data
in the real download layouts (GTA5 1914x1052 with frames lacking labels as in the download,
Cityscapes 2048x1024 with every gtFine file). Records each stage, the wall time and the peak RSS of
the process tree. JSON + markdown.

    python benchmarks/smoke_real_scale.py [--preset gta5-cityscapes] [--source-images 6] [--target-images 3]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gta5-cityscapes")
    ap.add_argument("--source-images", type=int, default=6)
    ap.add_argument("--target-images", type=int, default=3)
    ap.add_argument("--val-images", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="keep the data and run folder here")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--resume", action="store_true",
                    help="continue the run kept in --keep (its data are reused; finished stages are skipped)")
    args = ap.parse_args()
    from diga_sdk.data.layouts import (
        GTA5_MISSING_LABELS,
        GTA5_SIZE,
        write_cityscapes,
        write_gta5,
        write_synthia,
    )

    work = args.keep or Path(tempfile.mkdtemp(prefix="diga-smoke-"))
    if args.resume and not (work / "run").is_dir():
        raise SystemExit(f"--resume: no run in {work / 'run'}")
    if args.resume:
        source = f"gta5:{work / 'gta5'}" if args.preset == "gta5-cityscapes" else f"synthia:{work / 'synthia'}"
        cs = work / "cityscapes"
    elif args.preset == "gta5-cityscapes":
        src = write_gta5(work / "gta5", args.source_images, GTA5_SIZE, first_id=GTA5_MISSING_LABELS[0] - 1,
                         without_label=GTA5_MISSING_LABELS[:1])
        source = f"gta5:{src}"
    else:
        source = f"synthia:{write_synthia(work / 'synthia', args.source_images)}"
    if not args.resume:
        cs = write_cityscapes(work / "cityscapes", "train", args.target_images)
        write_cityscapes(work / "cityscapes", "val", args.val_images)
    run = work / "run"
    # activation checkpointing: without it the first warm-up step of DeepLabV2-ResNet101 on three
    # 512x896 crops (two views) kept 34.9 GB of activations and was killed on this 24 GiB host
    steps = ["warmup.steps=2", "selftrain.steps=2", "translator.steps=2", "checkpoint_every=1",
             "model.activation_checkpointing=true"]
    cmd = [sys.executable, "-m", "diga_sdk.cli", "adapt", "--preset", args.preset, "--source", source,
           "--target", f"cityscapes:{cs}@train", "--out", str(run), "--json", str(work / "stages.json")] + ["--resume"] * args.resume
    for s in steps:
        cmd += ["--set", s]
    t0 = time.time()
    proc = subprocess.Popen(cmd, env={**os.environ, "DIGA_NO_PROGRESS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample() -> None:
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                peak[0] = max(peak[0], p.memory_info().rss + sum(c.memory_info().rss for c in p.children(True)))
            except psutil.Error:
                pass
            time.sleep(0.2)

    th = threading.Thread(target=sample)
    th.start()
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    proc.wait()
    th.join()
    stages = json.loads((work / "stages.json").read_text())["stages"] if proc.returncode == 0 else []
    result = {"machine": {"cpu": cpu_line()}, "preset": args.preset, "command": " ".join(cmd[1:]), "resumed": args.resume,
              "exit_code": proc.returncode, "seconds": round(time.time() - t0, 1), "peak_rss_mb": round(peak[0] / 2**20),
              "data": {"source_images": args.source_images, "target_train": args.target_images,
                       "target_val": args.val_images},
              "stages": [{k: s.get(k) for k in ("name", "target_val_miou", "seconds")} for s in stages],
              "log_tail": lines[-15:]}
    out = args.json or Path(f"benchmarks/results/smoke_{args.preset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "log_tail"}, indent=2))
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
