"""The ablation job (`make ablation`): on the embedded benchmark with one model (`light` by default,
`--model fast` for the two-branch one), every DiGA step and its baselines, in one table and
`runs/ablation/results.json` (the demo's schema).

Stages: source_only, oracle, warmup_skd (distillation, no mixture), warmup_skd_mix (+ cross-domain
mixture), selftrain (+ consensus self-training), selftrain_round2 (+ one refinement round) and
threshold_baseline (the same self-training with fixed-confidence-threshold pseudo-labels).

Rows for the details of the authors' code, each one switch flipped against the pipeline's setting
(the same initial model, pseudo-labels and steps, so a row differs from its reference by that switch):
warmup_target_bn_<on|off> (target BatchNorm statistics in warm-up, against warmup_skd_mix),
selftrain_centroids_<authors|sdk> (centroids as per-image class means with a 5-pixel minimum, updated
online from the consensus-kept labels, against selftrain) and selftrain_mix_<separate|joint> (the
ClassMix batch as its own forward, against selftrain).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..adapt.distill import SelfTrainInputs
from ..adapt.pipeline import (
    evaluate_checkpoint,
    run_pipeline,
    run_stage,
    stage_centroids,
    stage_train,
)
from ..config import AdaptConfig, ModelConfig, TrainConfig
from ..progress import log
from ..results import print_stage_table, stage_entry, write_results

SOURCE_TRAIN, TARGET_TRAIN = "synthetic:source@train", "synthetic:target@train"


# The demo schedule's steps per model: (warm-up, self-training per round). light's 200 + 100 keep `make demo`
# (baselines included) within 20 minutes on 2 idle cores (docs/adapt.md, "Measured results"). A training step
# of fast costs 0.55 of light's (benchmarks/results/reparam_cost.json), so fast trains twice the steps for
# about light's training compute; chosen on the tuning camera3 (docs/models.md, "A schedule for fast").
DEMO_STEPS: dict[str, tuple[int, int]] = {"light": (200, 100), "fast": (400, 200)}


def demo_steps(model: str) -> tuple[int, int]:
    """(warm-up steps, self-training steps per round) of the demo schedule for `model` (light's for others)."""
    return DEMO_STEPS.get(model, DEMO_STEPS["light"])


def demo_schedule(models: list[str]) -> str:
    """The demo schedule of `models` in words, for reports."""
    steps = "; ".join(f"{m}: warm-up {w}, self-training {s} per round" for m in models for w, s in [demo_steps(m)])
    return f"make demo ({steps}; one refinement round)"


def demo_adapt_config(init_checkpoint: str, quick: bool = False, model: str = "light") -> AdaptConfig:
    """The pipeline settings `make demo` and `make ablation` share (sized for 2 CPU cores), with `model`'s
    steps (`DEMO_STEPS`)."""
    cfg = AdaptConfig(init_checkpoint=init_checkpoint, model=ModelConfig(name=model))
    warmup, selftrain = demo_steps(model)
    if quick:
        warmup, selftrain = 4, 4
        cfg = cfg.model_copy(update={"checkpoint_every": 2})
    return cfg.model_copy(update={"warmup": cfg.warmup.model_copy(update={"steps": warmup}),
                                  "selftrain": cfg.selftrain.model_copy(update={"steps": selftrain})})


def train_baselines(out: Path, quick: bool = False, model: str = "light",
                    names: tuple[str, ...] = ("source_only", "oracle"), seed: int = 0) -> list[dict[str, Any]]:
    """source_only and oracle (supervised, 500 steps each; `names` picks which; `seed` their training seed),
    evaluated on source-val and target-val."""
    from ..adapt.supervised import train_supervised

    steps = 20 if quick else TrainConfig().steps
    entries = []
    for name, data in (("source_only", SOURCE_TRAIN), ("oracle", TARGET_TRAIN)):
        if name not in names:
            continue
        cfg = TrainConfig(train_data=data, steps=steps, model=ModelConfig(name=model), seed=seed)

        def work(cfg: TrainConfig = cfg, name: str = name) -> dict[str, Any]:
            ckpt = train_supervised(cfg, out / name, stage=name, resume=True)
            return {"checkpoint": str(ckpt), "checkpoint_selection": "last",
                    **evaluate_checkpoint(ckpt, AdaptConfig())}

        rec = run_stage(name, out / name, work, resume=True)
        entries.append(_entry(rec))
    return entries


def gap_closed(stages: list[dict[str, Any]], final: str) -> float | None:
    """(final - source_only) / (oracle - source_only) on target-val, in percent."""
    by = {s["name"]: s.get("target_val_miou") for s in stages}
    src, orc, fin = by.get("source_only"), by.get("oracle"), by.get(final)
    if None in (src, orc, fin) or orc == src:
        return None
    return 100.0 * (fin - src) / (orc - src)


def run_ablation(out: str | Path, resume: bool = True, quick: bool = False, model: str = "light") -> list[dict[str, Any]]:
    out = Path(out)
    stages = train_baselines(out, quick, model)
    src_ckpt = stages[0]["checkpoint"]
    cfg = demo_adapt_config(src_ckpt, quick, model)

    log.info("ablation: the full pipeline (warm-up with mixture, self-training, one refinement round)")
    pipe = run_pipeline(cfg, out / "diga", resume)
    renames = {"warmup": "warmup_skd_mix"}

    log.info("ablation: warm-up with symmetric distillation, no cross-domain mixture")
    no_mix = cfg.warmup.model_copy(update={"mix": False})
    rec = run_stage("warmup_skd", out / "warmup_skd",
                    lambda: stage_train("warmup_skd", cfg, no_mix, src_ckpt, out / "warmup_skd", resume), resume)
    stages.append(_entry(rec))

    for s in pipe["stages"]:
        stages.append({**s, "name": renames.get(s["name"], s["name"])})

    log.info("ablation: fixed-confidence-threshold self-training baseline (same pseudo-labels, same steps)")
    warm = next(s for s in pipe["stages"] if s["name"] == "warmup")["checkpoint"]
    pseudo_dir = Path(next(a for a in pipe["artifacts"] if a["name"] == "pseudo_r1")["pseudo_dir"])
    thr_cfg = cfg.model_copy(update={"selection": cfg.selection.model_copy(update={"kind": "threshold"})})
    inputs = SelfTrainInputs(pseudo_dir, None, thr_cfg.selection)
    rec = run_stage("threshold_baseline", out / "threshold_baseline", lambda: stage_train(
        "threshold_baseline", thr_cfg, thr_cfg.selftrain, warm, out / "threshold_baseline", resume, inputs), resume)
    stages.append(_entry(rec))

    stages += method_detail_rows(cfg, out, src_ckpt, warm, pseudo_dir,
                                 Path(next(a for a in pipe["artifacts"] if a["name"] == "pseudo_r1")["centroids"]),
                                 resume)

    extra = {"gap_closed_percent": {s["name"]: gap_closed(stages, s["name"]) for s in stages
                                    if s["name"] not in ("source_only", "oracle")},
             "artifacts": pipe["artifacts"], "config": cfg.model_dump(mode="json")}
    write_results(out / "results.json", stages, **extra)
    print_stage_table(stages, title=f"Ablation, embedded benchmark, {model} model: mIoU (%)")
    return stages


def method_detail_rows(cfg: AdaptConfig, out: Path, src_ckpt: str, warm: str, pseudo_dir: Path, centroids: Path,
                       resume: bool) -> list[dict[str, Any]]:
    """One row per switch of the authors' code, flipped against the pipeline's own setting."""
    rows = []
    bn = not cfg.warmup.target_bn
    name = f"warmup_target_bn_{'on' if bn else 'off'}"
    log.info("ablation: %s", name)
    scfg = cfg.warmup.model_copy(update={"target_bn": bn})
    rows.append(_entry(run_stage(name, out / name, lambda: stage_train(name, cfg, scfg, src_ckpt, out / name, resume),
                                 resume)))

    bn = not cfg.selftrain.target_bn
    name = f"selftrain_target_bn_{'on' if bn else 'off'}"
    log.info("ablation: %s", name)
    tcfg = cfg.model_copy(update={"selftrain": cfg.selftrain.model_copy(update={"target_bn": bn})})
    rows.append(_entry(run_stage(name, out / name, lambda: stage_train(
        name, tcfg, tcfg.selftrain, warm, out / name, resume,
        SelfTrainInputs(pseudo_dir, centroids, cfg.selection)), resume)))

    sel = cfg.selection
    authors = not (sel.centroid_labels == "consensus" and sel.centroid_init == "image")
    name = f"selftrain_centroids_{'authors' if authors else 'sdk'}"
    log.info("ablation: %s", name)
    flipped = (sel.model_copy(update={"centroid_labels": "consensus", "centroid_init": "image", "centroid_min_pixels": 5})
               if authors else sel.model_copy(update={"centroid_labels": "pseudo", "centroid_init": "pixel",
                                                      "centroid_min_pixels": 1}))
    ccfg = cfg.model_copy(update={"selection": flipped})

    def centroid_row(name: str = name) -> dict[str, Any]:
        cents = Path(stage_centroids(ccfg, warm, out / name / "centroids")["centroids"])
        return stage_train(name, ccfg, ccfg.selftrain, warm, out / name, resume,
                           SelfTrainInputs(pseudo_dir, cents, flipped))

    rows.append(_entry(run_stage(name, out / name, centroid_row, resume)))

    mix = "separate" if cfg.selftrain.mix_forward == "joint" else "joint"
    name = f"selftrain_mix_{mix}"
    log.info("ablation: %s", name)
    mcfg = cfg.model_copy(update={"selftrain": cfg.selftrain.model_copy(update={"mix_forward": mix})})
    rows.append(_entry(run_stage(name, out / name, lambda: stage_train(
        name, mcfg, mcfg.selftrain, warm, out / name, resume, SelfTrainInputs(pseudo_dir, centroids, sel)), resume)))
    return rows


def _entry(rec: dict[str, Any]) -> dict[str, Any]:
    extra = {k: v for k, v in rec.items() if k not in ("name", "source_val_miou", "target_val_miou")}
    return stage_entry(rec["name"], rec.get("source_val_miou"), rec.get("target_val_miou"), **extra)
