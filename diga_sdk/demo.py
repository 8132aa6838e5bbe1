"""The main job (`make demo`): on the embedded benchmark, train the baselines, evaluate every stage
on source-val and target-val, print the table and write `results.json`."""

from __future__ import annotations

from pathlib import Path

from .config import ModelConfig, TrainConfig
from .progress import log
from .results import print_stage_table, stage_entry, write_results

SOURCE_VAL, TARGET_VAL = "synthetic:source@val", "synthetic:target@val"


def run_demo(out: str | Path, quick: bool = False, model: str = "light") -> list[dict]:
    """`model` picks the architecture (`light`, or `fast` for the two-branch one); the baselines' schedule is
    the same for both, the adaptation's steps are the model's (`bench.ablation.DEMO_STEPS`)."""
    from .adapt.supervised import train_supervised
    from .evaluate_specs import evaluate_specs

    out = Path(out)
    steps = 20 if quick else TrainConfig().steps
    stages = []
    for name, data in (("source_only", "synthetic:source@train"), ("oracle", "synthetic:target@train")):
        cfg = TrainConfig(train_data=data, steps=steps, model=ModelConfig(name=model))
        log.info("stage %s: %d steps on %s", name, steps, data)
        ckpt = train_supervised(cfg, out / name, stage=name, resume=True)
        res = evaluate_specs(ckpt, [SOURCE_VAL, TARGET_VAL])
        stages.append(stage_entry(name, res[SOURCE_VAL]["miou"], res[TARGET_VAL]["miou"], checkpoint=str(ckpt)))
        write_results(out / "results.json", stages)
    stages += _run_adaptation(out, stages[0]["checkpoint"], quick, model)
    from .bench.ablation import gap_closed

    closed = {n: gap_closed(stages, n) for n in ("warmup", "selftrain", "selftrain_round2")}
    write_results(out / "results.json", stages, gap_closed_percent=closed)
    print_stage_table(stages, title=f"Embedded benchmark, {model} model: mIoU (%)")
    return stages


def _run_adaptation(out: Path, source_only_ckpt: str, quick: bool, model: str) -> list[dict]:
    """The DiGA pipeline from the source-only model: warm-up, pseudo-labels, centroids, self-training,
    one refinement round (issue 3); resumes a crashed demo."""
    from .adapt.pipeline import run_pipeline
    from .bench.ablation import demo_adapt_config

    return run_pipeline(demo_adapt_config(source_only_ckpt, quick, model), out / "diga", resume=True)["stages"]
