"""Both models through the full DiGA pipeline on the embedded benchmark, on the schedule of `make demo`
and `make ablation`'s pipeline rows (source-only and oracle 500 steps; each model's warm-up and
self-training steps per round from `bench.ablation.DEMO_STEPS`, one refinement round): each model's
final target-val mIoU and the share of its own source-only -> oracle gap closed.

Each model runs `diga demo --model NAME` into `--out/NAME` (seed 0; resumable: a finished model is read
back); `--seeds N` adds the adaptation stages with seeds 1..N-1 from the same source-only model into
`--out/NAME/seedK`, and the report gives each stage's mean and standard deviation over the seeds beside
seed 0. A change in the last bit anywhere moves self-training by up to about 2 mIoU, so one seed compares
the models only to within that; the seed means are what the comparison rests on.

    python benchmarks/models_pipeline.py [--models light,fast] [--seeds 3] [--out runs/models_pipeline] [--json PATH]

`--set KEY=VALUE` (repeatable) compares a switch: the plain run above (resumed where done) beside every
seed's adaptation stages with those settings on top of the demo's, from the same source-only models, into
`--out/NAME/set-.../seedK`; the report holds both per model and seed (rendered like the camera2 switches):
    python benchmarks/models_pipeline.py --seeds 3 --set bn_recalibration=off --json runs/models_pipeline_bn_off.json

`--reuse NAME=REPORT` takes a model's entry from an earlier report (when only the other model changed); with
more `--seeds` than it holds, the missing seeds run here from the source-only model retrained into `--out/NAME`
(more seeds for a model whose runs are no longer on disk). The report gives fast minus light over the seed
means with its standard error.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ADAPT_STAGES = ("warmup", "selftrain", "selftrain_round2")


def run_model(name: str, run: Path, seeds: int, sets: list[str], earlier: dict | None = None) -> dict:
    """Seed 0 as `diga demo --model NAME`, then the adaptation stages of the other seeds; with `sets`, the
    demo's source-only and oracle models, then every seed's adaptation stages with the settings applied.
    With `earlier` (the model's entry of an earlier report), its seeds are read back and only the seeds it
    lacks run, from the source-only model retrained here (its target-val mIoU is recorded beside the one
    on record: float order can move it in the last digits)."""
    from diga_sdk.adapt.pipeline import run_pipeline
    from diga_sdk.bench.ablation import demo_adapt_config, gap_closed, train_baselines
    from diga_sdk.config import with_sets
    from diga_sdk.demo import run_demo

    extra = {k: earlier[k] for k in ("source_only_retrained",) if earlier is not None and k in earlier}
    if sets:
        baselines = train_baselines(run, model=name)
        first = {s["name"]: s.get("target_val_miou") for s in baselines}
        src_ckpt = next(s["checkpoint"] for s in baselines if s["name"] == "source_only")
        folder, start, closed = run / ("set-" + ",".join(sets)), 0, None
    elif earlier is not None:
        first, closed = dict(earlier["target_val_miou"]), earlier["gap_closed_percent"]
        per_seed = {int(k): v for k, v in earlier["per_seed"].items() if int(k) < seeds}
        start = len(earlier["per_seed"])
        if start < seeds:
            retrained = train_baselines(run, model=name, names=("source_only",))[0]
            src_ckpt, folder = retrained["checkpoint"], run
            extra["source_only_retrained"] = {"target_val_miou": retrained.get("target_val_miou"),
                                              "seeds": list(range(start, seeds))}
    else:
        run_demo(run, model=name)
        res = json.loads((run / "results.json").read_text())
        first = {s["name"]: s.get("target_val_miou") for s in res["stages"]}
        src_ckpt = next(s["checkpoint"] for s in res["stages"] if s["name"] == "source_only")
        folder, start, closed = run, 1, res.get("gap_closed_percent")
    if earlier is None:
        per_seed = {} if sets else {0: {k: first[k] for k in ADAPT_STAGES}}
    for seed in range(start, seeds):
        cfg = with_sets(demo_adapt_config(src_ckpt, model=name).model_copy(update={"seed": seed}), sets)
        stages = run_pipeline(cfg, folder / f"seed{seed}", resume=True)["stages"]
        per_seed[seed] = {s["name"]: s.get("target_val_miou") for s in stages if s["name"] in ADAPT_STAGES}
    if sets:
        first.update(per_seed[0])
        rows = [{"name": k, "target_val_miou": v} for k, v in first.items()]
        closed = {k: gap_closed(rows, k) for k in ADAPT_STAGES}
    n = len(per_seed)
    src, orc = first["source_only"], first["oracle"]
    mean = {k: statistics.fmean(v[k] for v in per_seed.values()) for k in ADAPT_STAGES}
    std = {k: (statistics.stdev(v[k] for v in per_seed.values()) if n > 1 else None) for k in ADAPT_STAGES}
    return {"target_val_miou": first, "gap_closed_percent": closed,
            "final": first["selftrain_round2"], "per_seed": {str(k): v for k, v in sorted(per_seed.items())},
            "mean": mean, "std": std, "final_mean": mean["selftrain_round2"],
            "gap_closed_percent_mean": 100.0 * (mean["selftrain_round2"] - src) / (orc - src), **extra}


def switch_report(names: list[str], out: Path, seeds: int, sets: list[str]) -> dict:
    """Each model's plain pipeline and the pipeline with `sets`, seed by seed from the same source-only model."""
    from diga_sdk.bench.ablation import demo_adapt_config
    from diga_sdk.config import settings_of
    from diga_sdk.results import env_info

    report: dict = {"domain": "the embedded benchmark (synthetic target)", "schedule": "make demo / make ablation "
                    "pipeline rows", "default": settings_of(demo_adapt_config("unused"), sets), "variant": sets,
                    "models": {}, "env": env_info()}
    for name in names:
        runs = {"default": run_model(name, out / name, seeds, []), "variant": run_model(name, out / name, seeds, sets)}
        report["models"][name] = {
            "source_only": runs["default"]["target_val_miou"]["source_only"],
            "oracle": runs["default"]["target_val_miou"]["oracle"],
            "per_seed": {v: r["per_seed"] for v, r in runs.items()}, "mean": {v: r["mean"] for v, r in runs.items()},
            "std": {v: r["std"] for v, r in runs.items()},
            "final_default_minus_variant": runs["default"]["final_mean"] - runs["variant"]["final_mean"]}
    if {"light", "fast"} <= report["models"].keys():
        light, fast = report["models"]["light"], report["models"]["fast"]
        report["fast_minus_light_final_mean"] = {
            v: fast["mean"][v]["selftrain_round2"] - light["mean"][v]["selftrain_round2"] for v in ("default", "variant")}
    return report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="light,fast")
    ap.add_argument("--seeds", type=int, default=1, help="adaptation seeds per model (seed 0 is the demo's)")
    ap.add_argument("--out", type=Path, default=Path("runs/models_pipeline"))
    ap.add_argument("--json", type=Path, default=RESULTS / "models_pipeline.json")
    ap.add_argument("--reuse", action="append", default=[], metavar="NAME=REPORT",
                    help="read model NAME's entry back from an earlier report instead of running it again "
                         "(a model whose code and runs did not change; the report records where it came from)")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="KEY=VALUE on top of the demo's adaptation settings, every seed (repeatable)")
    args = ap.parse_args()
    from diga_sdk.bench.ablation import demo_schedule
    from diga_sdk.bench.seeds import mean_difference
    from diga_sdk.io import atomic_write_json
    from diga_sdk.results import env_info

    report: dict = {"schedule": demo_schedule(args.models.split(",")), "seeds": args.seeds, "models": {},
                    "env": env_info()}
    if args.sets:
        report = switch_report(args.models.split(","), args.out, args.seeds, args.sets)
        atomic_write_json(args.json, report)
        print(json.dumps({k: v for k, v in report.items() if k != "env"}, indent=2))
        return
    reuse = dict(r.split("=", 1) for r in args.reuse)
    for name in args.models.split(","):
        earlier = None
        if name in reuse:
            before = json.loads(Path(reuse[name]).read_text())
            earlier = before["models"][name]
        entry = run_model(name, args.out / name, args.seeds, [], earlier)
        if earlier is not None:
            # the seeds that came from a report (reusing a topped-up entry keeps its first report's seeds)
            origin = earlier.get("reused_from") or {"report": reuse[name], "env": before["env"]}
            seeds = origin.get("seeds", sorted(map(int, earlier["per_seed"])))
            entry["reused_from"] = {**origin, "seeds": [k for k in seeds if str(k) in entry["per_seed"]]}
        report["models"][name] = entry
    if {"light", "fast"} <= report["models"].keys():
        light, fast = report["models"]["light"], report["models"]["fast"]
        report["fast_minus_light_final"] = fast["final"] - light["final"]
        report["fast_minus_light_final_mean"] = fast["final_mean"] - light["final_mean"]
        # the difference over the first k seeds of both, k = 1..n: how far more seeds moved it
        common = sorted(set(light["per_seed"]) & set(fast["per_seed"]), key=int)
        report["fast_minus_light_final_mean_first_k"] = [
            statistics.fmean(fast["per_seed"][k]["selftrain_round2"] for k in common[:n])
            - statistics.fmean(light["per_seed"][k]["selftrain_round2"] for k in common[:n])
            for n in range(1, len(common) + 1)]
        report["fast_minus_light_final_mean_stderr"] = mean_difference(
            *[[r["selftrain_round2"] for r in m["per_seed"].values()] for m in (light, fast)])[1]
    atomic_write_json(args.json, report)
    print(json.dumps({k: v for k, v in report.items() if k != "env"}, indent=2))


if __name__ == "__main__":
    main()
