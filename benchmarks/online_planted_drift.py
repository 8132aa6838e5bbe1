"""The planted slow drift of `tests/test_online_guard.py`, run for the docs: the same tiny benchmark and small
model as the test (same generator seed, sizes and training), the same 64-frame `swap@8` streams and fast
learning settings, scored in 8-frame windows against the frozen model, under three monitors:

- `today`: the monitor without the slow signals (what main had before them);
- `slow-signals`: held-out source check and class-share divergence with their test bounds, but no probation
  (after a slow rollback the restored teacher serves again at once);
- `guarded`: the same plus probation (the rolled-back weights serve until the teacher passes the slow checks).

    python benchmarks/online_planted_drift.py --json benchmarks/results/online_planted_drift.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MONITORS = {"today": (False, True), "slow-signals": (True, False), "guarded": (True, True)}  # (guarded, probation)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="runs/bench/online_planted_drift.json")
    p.add_argument("--seeds", default="8,9", help="stream seeds (the test's: 8,9)")
    p.add_argument("--work", default=None, help="folder for the tiny benchmark and model (default: a temp folder)")
    a = p.parse_args(argv)
    os.environ.setdefault("DIGA_NO_PROGRESS", "1")
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import TINY_COUNTS, TINY_SIZE  # the test's tiny benchmark
    from online_fixtures import train_small_model
    from test_online_guard import _drift_run

    from diga_sdk.data.synthetic import generate_benchmark
    from diga_sdk.io import atomic_write_json
    from diga_sdk.results import env_info

    work = Path(a.work or tempfile.mkdtemp(prefix="planted-drift-"))
    bench = work / "synthetic"
    if not (bench / "manifest.json").is_file():
        generate_benchmark(bench, seed=3, size=TINY_SIZE, counts=TINY_COUNTS, workers=1)
    spec = f"gta5:{bench}/source/train"
    torch.set_num_threads(1)
    model = next(iter(sorted((work / "model").glob("*.safetensors"))), None) if (work / "model").is_dir() else None
    model = model or train_small_model(work / "model", spec)
    runs = []
    for seed in (int(s) for s in a.seeds.split(",")):
        for name, (guarded, probation) in MONITORS.items():
            gains, ad = _drift_run(model, guarded, spec, seed, probation=probation)
            runs.append({"seed": seed, "monitor": name, "gains": [round(g, 2) for g in gains],
                         "worst_drift_window": round(min(gains[1:]), 2), "rollback_frames": ad.rollback_frames,
                         "rollback_reasons": ad.rollback_reasons, "probation_frames": ad.counters.get("probation_frames", 0)})
            print(runs[-1], flush=True)
    atomic_write_json(a.json, {"window": 8, "frames": 64, "drift_from": 8, "threads": 1, "runs": runs, "env": env_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
