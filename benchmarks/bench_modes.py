"""The two other uses of DiGA measured on the embedded benchmark with the light model, on the demo's
schedules (TrainConfig defaults for supervised training; demo_adapt_config's warm-up/self-training steps).

- dg:   source_only (500 steps), then dg from it (the demo's 200 warm-up steps, photometric view, no target),
        evaluated on source-val and target-val, a domain the DG model never saw.
        -> benchmarks/results/modes_dg.json
- semi: 1/8 of target-train labelled (seed 0), the rest unlabelled: supervised -> warmup -> selftrain ->
        selftrain_round2, plus the oracle trained on every target-train label with the same schedule.
        -> benchmarks/results/modes_semi.json

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_modes.py [--mode dg|semi|all] [--out runs/modes]
Deterministic (every draw is a function of seed and step): run it again and the numbers repeat; timings
are incidental. Stages resume from --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diga_sdk.adapt.ablation import demo_adapt_config
from diga_sdk.config import AdaptConfig, DGConfig, SemiConfig, TrainConfig
from diga_sdk.io import atomic_write_json
from diga_sdk.results import env_info

RESULTS = Path(__file__).resolve().parent / "results"
SOURCE_VAL, TARGET_VAL, TARGET_TRAIN = "synthetic:source@val", "synthetic:target@val", "synthetic:target@train"


def bench_dg(out: Path) -> dict:
    from diga_sdk.adapt.dg import run_dg

    warmup = demo_adapt_config("unused").warmup  # the demo's warm-up schedule (200 steps)
    cfg = DGConfig(source="synthetic:source@train", eval=[SOURCE_VAL, TARGET_VAL],
                   dg=warmup.model_copy(update={"mix": False}))
    res = run_dg(cfg, out / "dg", resume=True)
    report = {**res.to_json(), "target_val_margin": res.margin(TARGET_VAL), "config": cfg.model_dump(mode="json"),
              "env": env_info()}
    atomic_write_json(RESULTS / "modes_dg.json", report)
    return report


def semi_config(fraction: float = 0.125) -> SemiConfig:
    demo = demo_adapt_config("unused")
    adapt = AdaptConfig(source_val=None, warmup=demo.warmup.model_copy(update={"mix": False}),
                        selftrain=demo.selftrain)
    return SemiConfig(target=TARGET_TRAIN, target_val=TARGET_VAL, labelled_fraction=fraction, split_seed=0,
                      supervised=TrainConfig(val_data=[]), adapt=adapt)


def bench_semi(out: Path) -> dict:
    from diga_sdk.adapt.pipeline import evaluate_checkpoint, run_stage
    from diga_sdk.adapt.semi import run_semi
    from diga_sdk.adapt.supervised import train_supervised

    cfg = semi_config()
    res = run_semi(cfg, out / "semi", resume=True)
    oracle_cfg = TrainConfig(train_data=TARGET_TRAIN, val_data=[])

    def oracle() -> dict:
        ckpt = train_supervised(oracle_cfg, out / "oracle", stage="oracle", resume=True)
        return {"checkpoint": str(ckpt), **evaluate_checkpoint(ckpt, AdaptConfig(source_val=None))}

    orc = run_stage("oracle", out / "oracle", oracle, resume=True)["target_val_miou"]
    final = res.stages[-1].name
    report = {**res.to_json(), "labelled_fraction": cfg.labelled_fraction, "oracle_target_val_miou": orc,
              "final_stage": final, "final_minus_supervised": res.miou(final) - res.miou("supervised"),
              "final_minus_oracle": res.miou(final) - orc,
              "gap_to_oracle_closed_percent": 100.0 * (res.miou(final) - res.miou("supervised"))
              / (orc - res.miou("supervised")),
              "config": cfg.model_dump(mode="json"), "env": env_info()}
    atomic_write_json(RESULTS / "modes_semi.json", report)
    return report


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mode", choices=("dg", "semi", "all"), default="all")
    ap.add_argument("--out", type=Path, default=Path("runs/modes"))
    args = ap.parse_args()
    if args.mode in ("dg", "all"):
        bench_dg(args.out)
    if args.mode in ("semi", "all"):
        bench_semi(args.out)
