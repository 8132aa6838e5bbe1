"""Semi-supervised segmentation: a labelled share of one dataset and the unlabelled rest.

The labelled share (chosen from a seed, or read from a list) is written to RUN/split.txt; then the
DiGA pipeline runs with the labelled share in the source's place and the unlabelled rest as its target:
`supervised` (plain training on the labelled share: the baseline and the warm-up's start), `warmup`,
`selftrain`, `selftrain_round2`, ... each evaluated on target-val. Resumable like `diga adapt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import AdaptConfig, SemiConfig, save_config
from ..data.datasets import open_dataset
from ..data.split import choose_labelled, match_list, read_list_lines, split_text, write_split
from ..errors import DigaError
from ..progress import log
from ..results import StageEval, print_stage_table, stage_entry, write_results
from .pipeline import _check_fresh, evaluate_checkpoint, run_pipeline, run_stage

SPLIT_FILE = "split.txt"


@dataclass(frozen=True)
class SemiResult:
    """Every stage's target-val mIoU, the split file and the share sizes."""

    stages: list[StageEval]
    target_val: str
    split_file: Path
    labelled: int
    unlabelled: int

    def miou(self, name: str) -> float:
        return next(s for s in self.stages if s.name == name).eval[self.target_val]

    def to_json(self) -> dict[str, Any]:
        """The `diga adapt` shape: {"stages": [{name, source_val_miou, target_val_miou, ...}], ...}."""
        return {"stages": [stage_entry(s.name, None, s.eval[self.target_val], checkpoint=s.checkpoint,
                                       seconds=s.seconds) for s in self.stages],
                "split_file": str(self.split_file), "labelled": self.labelled, "unlabelled": self.unlabelled}


def make_split(cfg: SemiConfig, path: Path, resume: bool = False) -> tuple[int, int]:
    """Choose (or read) the labelled share of `cfg.target` and write it to `path`; (labelled, unlabelled).
    When resuming, an existing split file must hold the same share."""
    data = open_dataset(cfg.target)
    if not data.has_labels:
        raise DigaError(f"{cfg.target} has no labels; semi-supervised training needs a labelled dataset spec")
    if cfg.labelled_list:
        chosen = match_list(read_list_lines(cfg.labelled_list), data, cfg.labelled_list)
        how = f"listed in {cfg.labelled_list}"
    elif cfg.labelled_fraction is not None:
        chosen = choose_labelled(len(data), cfg.labelled_fraction, cfg.split_seed)
        how = f"fraction {cfg.labelled_fraction}, seed {cfg.split_seed}"
    else:
        raise DigaError("semi-supervised training needs --labelled-fraction F or --labelled-list FILE")
    if len(chosen) == len(data):
        raise DigaError(f"every image of {cfg.target} is labelled; nothing is left for self-training")
    text = split_text(cfg.target, data, chosen, how)
    if resume and path.is_file() and path.read_text() != text:
        raise DigaError(f"{path} holds a different labelled share than the one asked for; use a new --out")
    write_split(path, text)
    return len(chosen), len(data) - len(chosen)


def pipeline_config(cfg: SemiConfig, split_file: Path, init: str) -> AdaptConfig:
    """The DiGA pipeline with the labelled share as source and the unlabelled rest as target."""
    spec = f"split:{split_file.resolve()}"
    return cfg.adapt.model_copy(update={"source": f"{spec}@labelled", "target": f"{spec}@unlabelled",
                                        "target_val": cfg.target_val, "source_val": None,
                                        "init_checkpoint": init, "source_only": None})


def run_semi(cfg: SemiConfig, out: str | Path, resume: bool = False, show: bool = True) -> SemiResult:
    """Split, then supervised -> warm-up -> self-training -> rounds into RUN_DIR; writes RUN_DIR/results.json."""
    from .supervised import train_supervised

    out = Path(out)
    _check_fresh(out, resume)
    if not open_dataset(cfg.target_val).has_labels:  # fail before any training, not after it
        raise DigaError(f"--target-val {cfg.target_val} has no labels; evaluation needs a labelled split")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "semi.yaml")
    split_file = out / SPLIT_FILE
    n_lab, n_unlab = make_split(cfg, split_file, resume)
    log.info("semi-supervised: %d labelled, %d unlabelled images (%s)", n_lab, n_unlab, split_file)
    labelled = f"split:{split_file.resolve()}@labelled"
    sup_cfg = cfg.supervised.model_copy(update={"model": cfg.adapt.model, "train_data": labelled, "val_data": [],
                                                "seed": cfg.adapt.seed, "device": cfg.adapt.device,
                                                "data": cfg.adapt.data})

    def supervised() -> dict[str, Any]:
        ckpt = train_supervised(sup_cfg, out / "supervised", stage="supervised", resume=resume)
        return {"checkpoint": str(ckpt), "checkpoint_selection": "last",
                **evaluate_checkpoint(ckpt, pipeline_config(cfg, split_file, str(ckpt)))}

    sup = run_stage("supervised", out / "supervised", supervised, resume)
    # Freshness was checked above, so resuming inside the pipeline only ever continues this run.
    pipe = run_pipeline(pipeline_config(cfg, split_file, sup["checkpoint"]), out, resume=True)
    records = [sup, *pipe["stages"]]
    stages = [StageEval(r["name"], r["checkpoint"], {cfg.target_val: r["target_val_miou"]}, r.get("seconds"))
              for r in records]
    result = SemiResult(stages, cfg.target_val, split_file, n_lab, n_unlab)
    js = result.to_json()
    write_results(out / "results.json", js["stages"], split_file=js["split_file"], labelled=n_lab,
                  unlabelled=n_unlab, artifacts=pipe["artifacts"], config=cfg.model_dump(mode="json"))
    if show:
        print_stage_table(js["stages"], title=f"Semi-supervised ({n_lab} labelled, {n_unlab} unlabelled): mIoU (%)")
    return result
