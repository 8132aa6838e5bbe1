"""Domain generalisation: train on labelled source only, never a target image, and evaluate on unseen domains.

Two stages, as `diga adapt` runs them: `source_only` (plain supervised), then `dg` from that model: the
warm-up's symmetric distillation between the clean source image and its photometric view
x_aug = beta * aug(x) + (1 - beta) * x with an EMA teacher (`distill.diga_step` with mix=False and no
target). Each stage is evaluated on every `eval` spec. Stages resume like `diga adapt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import AdaptConfig, DGConfig, DistilConfig, TrainConfig, save_config
from ..data.datasets import open_dataset
from ..errors import DigaError
from ..results import StageEval, print_eval_table, write_results
from .distill import train_distil_stage
from .pipeline import _check_fresh, run_stage, stage_init


@dataclass(frozen=True)
class DGResult:
    """The two stages' mIoU on every evaluation set; `margin(spec)` = dg - source_only."""

    stages: list[StageEval]
    eval_specs: list[str]

    def stage(self, name: str) -> StageEval:
        return next(s for s in self.stages if s.name == name)

    @property
    def baseline(self) -> str:
        """The stage DG is measured against: `source_only`, or `init` (a given source model)."""
        return self.stages[0].name

    def margin(self, spec: str) -> float:
        return self.stage("dg").eval[spec] - self.stage(self.baseline).eval[spec]

    def to_json(self) -> dict[str, Any]:
        return {"stages": [{"name": s.name, "eval": s.eval, "checkpoint": s.checkpoint, "seconds": s.seconds}
                           for s in self.stages],
                f"margin_dg_minus_{self.baseline}": {spec: self.margin(spec) for spec in self.eval_specs}}


def source_only_train_config(cfg: DGConfig) -> TrainConfig:
    return cfg.source_only.model_copy(update={"model": cfg.model, "train_data": cfg.source, "val_data": [],
                                              "crop": cfg.crop, "scale": cfg.scale, "seed": cfg.seed,
                                              "device": cfg.device, "data": cfg.data})


def dg_stage_configs(cfg: DGConfig) -> tuple[AdaptConfig, DistilConfig]:
    """The warm-up settings that make the DG stage: photometric second view, no mixture, no target."""
    acfg = AdaptConfig(model=cfg.model, source=cfg.source, target=None, source_val=None, crop=cfg.crop,
                       scale=cfg.scale, seed=cfg.seed, checkpoint_every=cfg.checkpoint_every, device=cfg.device,
                       data=cfg.data)
    return acfg, cfg.dg.model_copy(update={"mix": False})


def _check_specs(cfg: DGConfig) -> None:
    """Open the source and every eval set before any training, so a bad spec fails at once."""
    if not open_dataset(cfg.source).has_labels:
        raise DigaError(f"source {cfg.source} has no labels; domain generalisation trains on a labelled source")
    for spec in cfg.eval:
        if not open_dataset(spec).has_labels:
            raise DigaError(f"--eval {spec} has no labels; evaluation needs a labelled split")


def _evaluated(ckpt: Path, cfg: DGConfig) -> dict[str, Any]:
    from ..evaluate_specs import evaluate_specs

    res = evaluate_specs(ckpt, cfg.eval, device=cfg.device, scales=tuple(cfg.eval_scales))
    return {"checkpoint": str(ckpt), "eval": {spec: r["miou"] for spec, r in res.items()},
            "per_class": {spec: r["per_class"] for spec, r in res.items()}}


def run_dg(cfg: DGConfig, out: str | Path, resume: bool = False, show: bool = True) -> DGResult:
    """Train source_only and dg into RUN_DIR/{source_only,dg}, evaluate both on every eval set, write
    RUN_DIR/results.json and (with `show`) print the table."""
    from .supervised import train_supervised

    if not cfg.eval:
        raise DigaError("domain generalisation needs at least one --eval dataset spec")
    out = Path(out)
    _check_fresh(out, resume)
    _check_specs(cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "dg.yaml")

    def source_only() -> dict[str, Any]:
        ckpt = train_supervised(source_only_train_config(cfg), out / "source_only", stage="source_only",
                                resume=resume)
        return _evaluated(ckpt, cfg)

    if cfg.init_checkpoint:  # a given source model is the baseline and the DG stage's start
        src = run_stage("init", out / "init", lambda: _evaluated(Path(cfg.init_checkpoint), cfg), resume)
    else:
        src = run_stage("source_only", out / "source_only", source_only, resume)
    acfg, scfg = dg_stage_configs(cfg)
    if cfg.dg_init == "backbone" and not cfg.init_checkpoint:  # the authors': DG trains from the ImageNet backbone
        init = run_stage("init", out / "init", lambda: stage_init(acfg, out / "init"), resume)["checkpoint"]
    else:
        init = src["checkpoint"]

    def dg() -> dict[str, Any]:
        ckpt = train_distil_stage("dg", acfg, scfg, init, out / "dg", resume=resume)
        return {"init": init, **_evaluated(ckpt, cfg)}

    records = [src, run_stage("dg", out / "dg", dg, resume)]
    result = DGResult([StageEval.from_record(r) for r in records], list(cfg.eval))
    js = result.to_json()
    margin_key = f"margin_dg_minus_{result.baseline}"
    write_results(out / "results.json", js["stages"], **{margin_key: js[margin_key]},
                  config=cfg.model_dump(mode="json"))
    if show:
        print_eval_table([(s.name, s.eval) for s in result.stages], result.eval_specs,
                         "Domain generalisation: mIoU (%) per evaluation set (no target image seen)")
    return result
