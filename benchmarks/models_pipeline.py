"""Both models through the full DiGA pipeline on the embedded benchmark, on the schedule of `make demo`
and `make ablation`'s pipeline rows (source-only and oracle 500 steps; warm-up 200, self-training and its
refinement round 100 each): each model's final target-val mIoU and the share of its own source-only ->
oracle gap closed. Each model runs `diga demo --model NAME` into `--out/NAME` (resumable: a finished model
is read back), one after the other; the combined report goes to
benchmarks/results/models_pipeline.json.

    python benchmarks/models_pipeline.py [--models light,fast] [--out runs/models_pipeline] [--json PATH]

mIoU is deterministic for a given code, data and CPU (every draw is a function of seed and step), but a
change in the last bit anywhere moves self-training by up to about 2 mIoU, so one run per model compares
the models only to within that.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="light,fast")
    ap.add_argument("--out", type=Path, default=Path("runs/models_pipeline"))
    ap.add_argument("--json", type=Path, default=RESULTS / "models_pipeline.json")
    args = ap.parse_args()
    from diga_sdk.demo import run_demo
    from diga_sdk.io import atomic_write_json
    from diga_sdk.results import env_info

    report: dict = {"schedule": "make demo / make ablation pipeline rows", "models": {}, "env": env_info()}
    for name in args.models.split(","):
        run = args.out / name
        run_demo(run, model=name)
        res = json.loads((run / "results.json").read_text())
        stages = {s["name"]: s.get("target_val_miou") for s in res["stages"]}
        report["models"][name] = {"target_val_miou": stages, "gap_closed_percent": res.get("gap_closed_percent"),
                                  "final": stages.get("selftrain_round2")}
    if {"light", "fast"} <= report["models"].keys():
        report["fast_minus_light_final"] = report["models"]["fast"]["final"] - report["models"]["light"]["final"]
    atomic_write_json(args.json, report)
    print(json.dumps({k: v for k, v in report.items() if k != "env"}, indent=2))


if __name__ == "__main__":
    main()
