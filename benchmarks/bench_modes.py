"""The two other uses of DiGA measured on the embedded benchmark with the light model, on the demo's
schedules (TrainConfig defaults for supervised training; demo_adapt_config's warm-up/self-training steps).

- dg:   source_only (500 steps), then dg from it (the demo's 200 warm-up steps, photometric view, no target),
        evaluated on source-val and target-val, a domain the DG model never saw.
        -> benchmarks/results/modes_dg.json
- semi: 1/8 of target-train labelled (seed 0), the rest unlabelled: supervised -> warmup -> selftrain ->
        selftrain_round2 (self-training 200 steps a round, lambda 0.5, beta 0.4: the authors' semi values),
        compared with the oracle trained on every target-train label (the supervised stage's schedule).
        Every stage is also scored on the selection split (the unlabelled share's ground truth, never a
        training label): a choice between recipe variants is made there, target-val is only reported.
        -> benchmarks/results/modes_semi.json (a variant: --semi-json NAME)

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_modes.py [--mode dg|semi|oracle|all|collect-semi] [--out runs/modes]
(`oracle` retrains the target oracle; without it the semi report cites the ablation's oracle; `collect-semi`
rewrites modes_semi.json from the stages finished so far.)
Deterministic (every draw is a function of seed and step): run it again and the numbers repeat; timings
are incidental. Stages resume from --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diga_sdk.bench.ablation import demo_adapt_config
from diga_sdk.config import AdaptConfig, DGConfig, SemiConfig, TrainConfig, semi_selftrain
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


def semi_config(fraction: float = 0.125, target_bn: bool = True, selftrain_target_bn: bool = True) -> SemiConfig:
    """The demo's warm-up (200 steps, photometric view); self-training as the authors' semi-supervised
    scripts run it: the warm-up's steps, lambda 0.5 and beta 0.4 in every round (`config.semi_selftrain`).
    `target_bn`: the warm-up's no-grad student forward of the unlabelled images (BatchNorm statistics);
    `selftrain_target_bn`: the same forward in every self-training round (the adaptation default)."""
    demo = demo_adapt_config("unused")
    warmup = demo.warmup.model_copy(update={"mix": False, "target_bn": target_bn})
    adapt = AdaptConfig(source_val=None, warmup=warmup,
                        selftrain=semi_selftrain(warmup, target_bn=selftrain_target_bn))
    return SemiConfig(target=TARGET_TRAIN, target_val=TARGET_VAL, labelled_fraction=fraction, split_seed=0,
                      supervised=TrainConfig(val_data=[]), adapt=adapt)


def bench_semi(out: Path, target_bn: bool = True, name: str = "modes_semi.json",
               selftrain_target_bn: bool = True) -> dict:
    from diga_sdk.adapt.semi import run_semi

    run_semi(semi_config(target_bn=target_bn, selftrain_target_bn=selftrain_target_bn), out / "semi", resume=True)
    return collect_semi(out, target_bn, name, selftrain_target_bn)


def bench_oracle(out: Path) -> float:
    """The oracle on every target-train label, TrainConfig defaults (the ablation's oracle, retrained here)."""
    from diga_sdk.adapt.pipeline import evaluate_checkpoint, run_stage
    from diga_sdk.adapt.supervised import train_supervised

    def oracle() -> dict:
        ckpt = train_supervised(TrainConfig(train_data=TARGET_TRAIN, val_data=[]), out / "oracle", stage="oracle",
                                resume=True)
        return {"checkpoint": str(ckpt), **evaluate_checkpoint(ckpt, AdaptConfig(source_val=None))}

    return run_stage("oracle", out / "oracle", oracle, resume=True)["target_val_miou"]


def selection_split(out: Path) -> str:
    """A dataset spec of the unlabelled share WITH its ground truth (OUT/semi/selection.txt): the split on which
    any choice about the semi-supervised recipe is judged, so that target-val stays untouched by choices.
    Its labels never enter training (the images do, unlabelled)."""
    from diga_sdk.data.datasets import open_dataset
    from diga_sdk.data.split import match_list, read_split, split_text, write_split

    spec, lines = read_split(out / "semi" / "split.txt")
    data = open_dataset(spec)
    labelled = set(match_list(lines, data, "split.txt"))
    rest = [i for i in range(len(data)) if i not in labelled]
    path = write_split(out / "semi" / "selection.txt",
                       split_text(spec, data, rest, "the unlabelled share, ground truth for selection only"))
    return f"split:{path.resolve()}@labelled"


def selection_scores(out: Path) -> dict[str, float]:
    """mIoU of every finished semi stage on the selection split (cached in OUT/semi/selection.json)."""
    import json

    from diga_sdk.evaluate_specs import evaluate_specs

    cache_file = out / "semi" / "selection.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    spec = selection_split(out)
    for name in ("supervised", "warmup", "selftrain", "selftrain_round2"):
        record = out / "semi" / name / "stage.json"
        if name not in cache and record.is_file():  # the checkpoint the stage handed on (BN-recalibrated or not)
            ckpt = json.loads(record.read_text())["checkpoint"]
            cache[name] = evaluate_specs(ckpt, [spec])[spec]["miou"]
            atomic_write_json(cache_file, cache)
    return cache


def collect_semi(out: Path, target_bn: bool = True, json_name: str = "modes_semi.json",
                 selftrain_target_bn: bool = True) -> dict:
    """modes_semi.json from the stages finished so far in OUT/semi (a run stopped early reports what it has);
    the oracle is OUT/oracle when trained, else the ablation's oracle (same TrainConfig schedule)."""
    import json

    stages = []
    for name in ("supervised", "warmup", "selftrain", "selftrain_round2"):
        f = out / "semi" / name / "stage.json"
        if f.is_file():
            rec = json.loads(f.read_text())
            stages.append({"name": name, "target_val_miou": rec["target_val_miou"], "checkpoint": rec["checkpoint"],
                           "seconds": rec.get("seconds")})
    orc_file = out / "oracle" / "stage.json"
    if orc_file.is_file():
        orc, orc_from = json.loads(orc_file.read_text())["target_val_miou"], str(orc_file)
    else:
        abl = json.loads((RESULTS / "ablation_results.json").read_text())
        orc = next(s["target_val_miou"] for s in abl["stages"] if s["name"] == "oracle")
        orc_from = "benchmarks/results/ablation_results.json (oracle: TrainConfig defaults on synthetic:target@train)"
    by = {s["name"]: s["target_val_miou"] for s in stages}
    last = stages[-1]["name"] if stages else None
    split = (out / "semi" / "split.txt").read_text().splitlines()[:3] if (out / "semi" / "split.txt").is_file() else []
    report = {"stages": stages, "finished": [s["name"] for s in stages], "split_header": split,
              "selection_split_miou": selection_scores(out) if stages else {},
              "selection_split": "the 350 unlabelled target-train images with their ground truth (never trained "
                                 "on as labels); recipe choices are judged here, target-val is reported only",
              "labelled_fraction": semi_config().labelled_fraction, "oracle_target_val_miou": orc,
              "oracle_from": orc_from, "last_finished_stage": last,
              "last_minus_supervised": by[last] - by["supervised"] if last and "supervised" in by else None,
              "last_minus_oracle": by[last] - orc if last else None,
              "config": semi_config(target_bn=target_bn, selftrain_target_bn=selftrain_target_bn).model_dump(
                  mode="json"), "env": env_info()}
    atomic_write_json(RESULTS / json_name, report)
    return report


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mode", choices=("dg", "semi", "oracle", "all", "collect-semi"), default="all")
    ap.add_argument("--out", type=Path, default=Path("runs/modes"))
    ap.add_argument("--semi-target-bn", choices=("on", "off"), default="on",
                    help="the semi warm-up's no-grad forward of the unlabelled images (BatchNorm statistics)")
    ap.add_argument("--semi-selftrain-target-bn", choices=("on", "off"), default="on",
                    help="the same forward in every semi self-training round")
    ap.add_argument("--semi-json", default="modes_semi.json", help="results file name of the semi run")
    args = ap.parse_args()
    bn, st_bn = args.semi_target_bn == "on", args.semi_selftrain_target_bn == "on"
    if args.mode in ("dg", "all"):
        bench_dg(args.out)
    if args.mode in ("semi", "all"):
        bench_semi(args.out, bn, args.semi_json, st_bn)
    if args.mode == "oracle":
        bench_oracle(args.out)
    if args.mode in ("oracle", "collect-semi"):
        collect_semi(args.out, bn, args.semi_json, st_bn)
