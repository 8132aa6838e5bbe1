"""Training schedules for one model on a held-out camera: each candidate (named --set overrides of the demo
schedule) on the same (source-only checkpoint, adaptation seed) pairs, beside a `heldout_domain.py
--source-seeds` report on record (the model at the schedule it ran, and the other model's pairs).

Choose on the tuning camera3, then judge the chosen schedule alone on camera2:

    python benchmarks/schedule_candidates.py --camera camera3 --data runs/camera3 --model fast \
        --pair runs/src/fast/seed0/model.safetensors:0 --pair runs/src/fast/seed1/model.safetensors:1 \
        --candidate selftrain_x2=warmup.steps=200,selftrain.steps=200 \
        --candidate both_x2=warmup.steps=400,selftrain.steps=200 \
        --reference benchmarks/results/heldout_camera3_models.json --out runs/schedules3 \
        --json benchmarks/results/schedule_candidates_camera3.json

Each --pair is SOURCE_ONLY_CHECKPOINT:SEED, optionally :WARMUP_DIR, a finished warm-up stage of that pair (a
run on record): a candidate whose warm-up settings equal those that run recorded in its adapt.yaml shares it
instead of training it again. Resumable: finished stages are read back from --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from heldout_domain import CAMERAS, STAGES, render_camera, run_variant


def parse_pair(text: str) -> tuple[str, int, Path | None]:
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise SystemExit(f"--pair {text!r}: write SOURCE_ONLY_CHECKPOINT:SEED[:WARMUP_DIR]")
    return parts[0], int(parts[1]), Path(parts[2]) if len(parts) == 3 else None


def shares_warmup(model: str, sets: list[str], warmup: Path | None) -> bool:
    """True when `warmup` (a finished warm-up stage folder) was trained with the candidate's warm-up settings,
    read from its run's adapt.yaml: a candidate that changes only self-training reuses it."""
    from diga_sdk.bench.ablation import demo_adapt_config
    from diga_sdk.config import AdaptConfig, load_config, with_sets

    if warmup is None:
        return False
    ran = load_config(warmup.resolve().parent / "adapt.yaml", AdaptConfig)
    return with_sets(demo_adapt_config("unused", model=model), sets).warmup == ran.warmup


def reference_pairs(report: dict, model: str, seeds: list[int]) -> list[float]:
    """The finals of `model`'s (source seed k, adaptation seed k) pairs, k in `seeds`, in a heldout_domain.py
    report."""
    pairs = report["models"][model]["source_seeds"]["pairs"]
    missing = [k for k in seeds if str(k) not in pairs]
    if missing:
        raise SystemExit(f"the reference has no pair for seed(s) {missing} of {model}")
    return [pairs[str(k)]["selftrain_round2"] for k in seeds]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--camera", choices=CAMERAS, required=True)
    ap.add_argument("--data", type=Path, required=True, help="where that camera's frames are (written if absent)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--pair", action="append", required=True, help="SOURCE_ONLY_CHECKPOINT:SEED[:WARMUP_DIR]")
    ap.add_argument("--candidate", action="append", required=True, help="NAME=KEY=VALUE[,KEY=VALUE...]")
    ap.add_argument("--reference", type=Path, required=True, help="heldout_domain.py --source-seeds report")
    ap.add_argument("--other", default="light", help="the model the reference compares with")
    ap.add_argument("--out", type=Path, default=Path("runs/schedules"))
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    from diga_sdk.bench.seeds import mean_difference
    from diga_sdk.io import atomic_write_json
    from diga_sdk.results import env_info

    data = render_camera(args.data, args.camera)
    reference = json.loads(args.reference.read_text())
    pairs = [parse_pair(p) for p in args.pair]
    seeds = [seed for _, seed, _ in pairs]
    on_record, other = reference_pairs(reference, args.model, seeds), reference_pairs(reference, args.other, seeds)
    report: dict = {"camera": args.camera, "model": args.model, "reference": args.reference.name,
                    "reference_schedule": reference["schedule"], "pairs": [[c, s] for c, s, _ in pairs],
                    "on_record": on_record, "other": {"name": args.other, "finals": other},
                    "candidates": {}, "env": env_info()}
    for item in args.candidate:
        name, _, spec = item.partition("=")
        sets = spec.split(",")
        runs, shared = {}, []
        for ckpt, seed, warmup in pairs:
            share = shares_warmup(args.model, sets, warmup)
            shared.append(share)
            folder = args.out / name / f"seed{seed}"
            runs[str(seed)] = run_variant(args.model, ckpt, data, folder, seed, sets, warmup if share else None)
        finals = [r["selftrain_round2"] for r in runs.values()]
        vs_record, vs_record_se = mean_difference(on_record, finals)
        vs_other, vs_other_se = mean_difference(other, finals)
        report["candidates"][name] = {
            "sets": sets, "shared_warmup": shared, "per_pair": runs,
            "mean": {k: statistics.fmean(r[k] for r in runs.values()) for k in STAGES},
            "minus_on_record": vs_record, "minus_on_record_stderr": vs_record_se,
            f"minus_{args.other}": vs_other, f"minus_{args.other}_stderr": vs_other_se}
        atomic_write_json(args.json, report)
    print(json.dumps({n: c["mean"] for n, c in report["candidates"].items()}, indent=1))


if __name__ == "__main__":
    main()
