"""The DiGA pipeline: (source-only) -> (translator) -> warm-up -> pseudo-labels -> centroids ->
self-training -> refinement rounds, each stage a folder of RUN_DIR with a `stage.json` once done.

A crashed run restarted with `resume=True` skips finished stages and resumes the interrupted
training stage from its last saved state. The model a stage hands on is its last checkpoint;
`select_best` (which reads target-val labels) is opt-in and recorded in the results.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import AdaptConfig, DistilConfig, TrainConfig, save_config
from ..data.datasets import open_dataset
from ..errors import DigaError
from ..io import atomic_write_json
from ..models.checkpoint import load_checkpoint
from ..models.registry import channels_last
from ..outputs import check_folder_path
from ..progress import log, progress_bar
from ..results import print_stage_table, stage_entry, write_results
from .centroids import CentroidAccumulator, initial_centroids, save_centroids
from .distill import SelfTrainInputs, train_distil_stage
from .distributed import barrier, init_world
from .pseudo import generate_pseudo_labels

STAGE_FILE = "stage.json"


def _read_stage(folder: Path) -> dict[str, Any] | None:
    f = folder / STAGE_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def evaluate_checkpoint(ckpt: str | Path, cfg: AdaptConfig) -> dict[str, Any]:
    """{source_val_miou, target_val_miou, target_val_per_class} of a checkpoint on the run's evaluation
    sets (None where the run has no such set)."""
    from ..evaluate_specs import evaluate_specs

    specs = cfg.eval_sets()
    if not specs:
        log.info("no labelled evaluation set for %s (give --target-val to evaluate the stages)", ckpt)
        return {"source_val_miou": None, "target_val_miou": None, "target_val_per_class": None}
    log.info("evaluating %s on %s (scales %s)", ckpt, ", ".join(specs), list(cfg.eval.scales))
    res = evaluate_specs(ckpt, specs, device=cfg.device, scales=cfg.eval.scales)
    tv = res.get(cfg.target_val) if cfg.target_val else None
    return {"source_val_miou": res[cfg.source_val]["miou"] if cfg.source_val else None,
            "target_val_miou": tv["miou"] if tv else None,
            "target_val_miou_16": tv.get("miou_16") if tv else None,
            "target_val_miou_13": tv.get("miou_13") if tv else None,
            "target_val_per_class": tv["per_class"] if tv else None}


def choose_checkpoint(stage_dir: Path, last: Path, cfg: AdaptConfig) -> tuple[Path, dict[str, Any]]:
    """The checkpoint a stage hands on: its last one, or (select_best) the best snapshot on target-val."""
    if not cfg.select_best:
        return last, {"checkpoint_selection": "last"}
    from ..evaluate_specs import evaluate_specs

    if not cfg.target_val:
        raise DigaError("select_best needs a labelled target-val set (--target-val)")
    candidates = sorted((stage_dir / "snapshots").glob("step*.safetensors")) + [last]
    scores = {str(c): evaluate_specs(c, [cfg.target_val], device=cfg.device, scales=cfg.eval.scales)
              [cfg.target_val]["miou"] for c in candidates}
    best = max(candidates, key=lambda c: scores[str(c)])
    log.warning("select_best: picked %s by target-val mIoU (uses target labels)", best.name)
    return best, {"checkpoint_selection": "best_target_val_uses_target_labels", "selected": best.name,
                  "candidates_target_val_miou": scores}


def run_stage(name: str, folder: Path, work: Callable[[], dict[str, Any]], resume: bool,
              main_only: bool = False) -> dict[str, Any]:
    """Run one stage unless its folder says it is done; `work` returns the stage's record.
    With DDP, `main_only` stages run on rank 0 while the others wait; every rank returns the record."""
    world = init_world()
    done = _read_stage(folder) if resume else None
    if done is not None:
        log.info("stage %s already done (%s); skipping", name, folder)
        return done
    folder.mkdir(parents=True, exist_ok=True)
    if world.is_main or not main_only:
        t0 = time.time()
        record = {"name": name, **work()}
        record["seconds"] = round(time.time() - t0, 1)
        if world.is_main:
            atomic_write_json(folder / STAGE_FILE, record)
    barrier(world)
    rec = _read_stage(folder)
    assert rec is not None
    return rec


# ---- the stages, each usable on its own ----

def source_only_config(cfg: AdaptConfig) -> TrainConfig:
    base = cfg.source_only or TrainConfig()
    return base.model_copy(update={"model": cfg.model, "train_data": cfg.source, "val_data": [], "seed": cfg.seed,
                                   "device": cfg.device, "data": cfg.data, "seg_loss": cfg.seg_loss,
                                   "eval": cfg.eval})


def stage_source_only(cfg: AdaptConfig, folder: Path, resume: bool) -> dict[str, Any]:
    from .supervised import train_supervised

    ckpt = train_supervised(source_only_config(cfg), folder, stage="source_only", resume=resume)
    return {"checkpoint": str(ckpt)}


def stage_init(cfg: AdaptConfig, folder: Path) -> dict[str, Any]:
    """The model warm-up starts from when no source-only stage runs: freshly built, with the backbone
    weights the config names (the authors start from an ImageNet-initialised DeepLabV2)."""
    from ..models.checkpoint import save_checkpoint
    from ..models.registry import build_model
    from .supervised import image_size, model_meta

    if not cfg.model.backbone_weights:
        log.warning("warm-up starts from random weights: set model.backbone_weights to an ImageNet backbone "
                    "(safetensors) for a real run")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, cfg.model.num_classes, backbone_weights=cfg.model.backbone_weights,
                        **cfg.model.options)
    size = image_size(open_dataset(cfg.source, strict=cfg.data.strict))
    path = save_checkpoint(model, folder / "model.safetensors", model_meta(cfg.model, "init", size))
    return {"checkpoint": str(path), "backbone_weights": cfg.model.backbone_weights}


def stage_translator(cfg: AdaptConfig, folder: Path, resume: bool) -> dict[str, Any]:
    from .translator_train import train_translator

    ckpt = train_translator(cfg.translator, cfg.source, cfg.target, folder, tuple(cfg.crop), tuple(cfg.scale),
                            cfg.seed, cfg.checkpoint_every, resume, cfg.device, cfg.data)
    return {"checkpoint": str(ckpt)}


def stage_train(name: str, cfg: AdaptConfig, scfg: DistilConfig, init: str | Path, folder: Path, resume: bool,
                selftrain: SelfTrainInputs | None = None) -> dict[str, Any]:
    """A warm-up or self-training stage followed by its (honest) checkpoint choice and evaluation."""
    last = train_distil_stage(name, cfg, scfg, init, folder, resume=resume, selftrain=selftrain)
    if not init_world().is_main:
        return {}
    ckpt, selection = choose_checkpoint(folder, last, cfg)
    if cfg.bn_recalibration == "target" and cfg.target:
        rec = stage_recalibrate(cfg, ckpt, folder)
        selection["bn_recalibrated_from"] = rec["bn_recalibrated_from"]
        ckpt = Path(rec["checkpoint"])
    return {"checkpoint": str(ckpt), "init": str(init), **selection, **evaluate_checkpoint(ckpt, cfg)}


def stage_recalibrate(cfg: AdaptConfig, ckpt: str | Path, folder: Path) -> dict[str, Any]:
    """`ckpt` with BatchNorm's running statistics re-estimated on the unlabelled target-train frames
    (`adapt/bn_recalibration.py`), written to `folder`; the checkpoint itself is left as it was."""
    from .bn_recalibration import RECALIBRATED, recalibrated_checkpoint

    if not cfg.target:
        raise DigaError("BatchNorm recalibration needs target images: pass --target")
    images = open_dataset(cfg.target, labelled=False, strict=cfg.data.strict)
    path = recalibrated_checkpoint(ckpt, images, folder / RECALIBRATED, cfg.pseudo.batch_size, cfg.device)
    return {"checkpoint": str(path), "bn_recalibrated_from": str(ckpt), "images": len(images)}


def stage_pseudo(cfg: AdaptConfig, ckpt: str | Path, folder: Path, with_centroids: bool = False) -> dict[str, Any]:
    """Pseudo-labels of target-train; `with_centroids` also writes the initial class centroids of the
    same model (`folder/centroids.safetensors`) from the same pass, as `stage_centroids` would."""
    model, meta = load_checkpoint(ckpt, cfg.device, fold=True)
    channels_last(model)
    data = open_dataset(cfg.target)  # labels, if any, only feed the recorded diagnostic
    acc = (CentroidAccumulator(meta.num_classes, cfg.selection.centroid_init, cfg.selection.centroid_min_pixels)
           if with_centroids else None)
    with progress_bar("pseudo-labels" + (" + centroids" if acc else ""), len(data)) as bar:
        manifest = generate_pseudo_labels(model, data, folder, tuple(cfg.pseudo.scales), cfg.pseudo.batch_size,
                                          cfg.device, str(ckpt), progress=lambda done, _n: bar.set(done),
                                          centroids=acc)
    diag = manifest.get("diagnostic_vs_ground_truth", {})
    rec = {"pseudo_dir": str(folder), "labelled_by": str(ckpt), "images": manifest["count"],
           "pseudo_label_miou_vs_gt": diag.get("miou"), "pseudo_label_accuracy_vs_gt": diag.get("pixel_accuracy")}
    if acc is not None:
        cents, seen, counts = acc.result()
        rec["centroids"] = str(save_centroids(folder / "centroids.safetensors", cents, seen, counts))
        rec["classes_seen"] = int(seen.sum())
    return rec


def stage_centroids(cfg: AdaptConfig, ckpt: str | Path, folder: Path) -> dict[str, Any]:
    model, meta = load_checkpoint(ckpt, cfg.device, fold=True)
    channels_last(model)
    data = open_dataset(cfg.target, labelled=False)
    with progress_bar("centroids", len(data)) as bar:
        cents, seen, counts = initial_centroids(model, data, meta.num_classes, cfg.pseudo.batch_size, cfg.device,
                                                progress=lambda done, _n: bar.set(done),
                                                mode=cfg.selection.centroid_init,
                                                min_pixels=cfg.selection.centroid_min_pixels)
    path = save_centroids(folder / "centroids.safetensors", cents, seen, counts)
    return {"centroids": str(path), "from": str(ckpt), "classes_seen": int(seen.sum())}


# ---- orchestration ----

def _started(out: Path) -> bool:
    """A run folder a pipeline has written into (its config, a finished stage or a stage's saved state)."""
    return out.is_dir() and ((out / "adapt.yaml").exists() or any(out.glob(f"*/{STAGE_FILE}"))
                             or any(out.glob("*/state*")) or any(out.glob("seed*/adapt.yaml")))


def _check_fresh(out: Path, resume: bool, resume_needs_run: bool = False) -> None:
    """Without resume the folder must hold no run (no silent overwrite); with `resume_needs_run` (the CLI's
    --resume) it must hold one. The demo and the ablation resume leniently (skip what is done)."""
    check_folder_path(out)
    if resume and resume_needs_run and not _started(out):
        raise DigaError(f"--resume: {out} holds no DiGA run to continue; drop --resume to start one")
    if not resume and _started(out):
        raise DigaError(f"run folder {out} already holds a DiGA run; pass --resume to continue it "
                        "or choose a new --out")


def run_pipeline(cfg: AdaptConfig, out: str | Path, resume: bool = False) -> dict[str, Any]:
    """The whole pipeline for one seed; returns {"stages": [...], "artifacts": [...]} and writes
    RUN_DIR/results.json."""
    if cfg.target is None:
        raise DigaError("the DiGA pipeline needs target images: pass --target (or use `diga adapt dg`)")
    world = init_world(cfg.device)
    out = Path(out)
    _check_fresh(out, resume)
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "adapt.yaml")
    stages: list[dict[str, Any]] = []
    artifacts: list[dict[str, Any]] = []

    init = cfg.init_checkpoint
    if init is None and cfg.warmup_init == "backbone":
        rec = run_stage("init", out / "init", lambda: stage_init(cfg, out / "init"), resume, main_only=True)
        artifacts.append(rec)
        init = rec["checkpoint"]
    elif init is None:
        rec = run_stage("source_only", out / "source_only", lambda: _with_eval(stage_source_only(
            cfg, out / "source_only", resume), cfg), resume)
        stages.append(rec)
        init = rec["checkpoint"]
    if cfg.translator.kind == "learned" and not cfg.translator.checkpoint:
        rec = run_stage("translator", out / "translator", lambda: stage_translator(cfg, out / "translator", resume),
                        resume, main_only=True)
        artifacts.append(rec)
        cfg = cfg.model_copy(update={"translator": cfg.translator.model_copy(update={"checkpoint": rec["checkpoint"]})})

    rec = run_stage("warmup", out / "warmup",
                    lambda: stage_train("warmup", cfg, cfg.warmup, init, out / "warmup", resume), resume)
    stages.append(rec)
    current = rec["checkpoint"]
    consensus = cfg.selection.kind == "consensus"
    for r in range(1, cfg.rounds + 2):
        rec_p = run_stage(f"pseudo_r{r}", out / f"pseudo_r{r}",
                          lambda c=current, r=r: stage_pseudo(cfg, c, out / f"pseudo_r{r}", consensus), resume,
                          main_only=True)
        artifacts.append(rec_p)
        cent_path = Path(rec_p["centroids"]) if consensus else None  # one pass gave labels and centroids
        name = "selftrain" if r == 1 else f"selftrain_round{r}"
        inputs = SelfTrainInputs(Path(rec_p["pseudo_dir"]), cent_path, cfg.selection)
        rec = run_stage(name, out / name, lambda c=current, n=name, i=inputs: stage_train(
            n, cfg, cfg.selftrain, c, out / n, resume, i), resume)
        stages.append(rec)
        current = rec["checkpoint"]
    result = {"stages": [_table_entry(s) for s in stages], "artifacts": artifacts}
    if world.is_main:
        write_results(out / "results.json", result["stages"], artifacts=artifacts,
                      config=cfg.model_dump(mode="json"))
    return result


def _with_eval(rec: dict[str, Any], cfg: AdaptConfig) -> dict[str, Any]:
    return {**rec, "checkpoint_selection": "last", **evaluate_checkpoint(rec["checkpoint"], cfg)}


def _table_entry(rec: dict[str, Any]) -> dict[str, Any]:
    extra = {k: v for k, v in rec.items() if k not in ("name", "source_val_miou", "target_val_miou")}
    return stage_entry(rec["name"], rec.get("source_val_miou"), rec.get("target_val_miou"), **extra)


def run_seeds(cfg: AdaptConfig, out: str | Path, seeds: int = 1, resume: bool = False) -> list[dict[str, Any]]:
    """Run the pipeline for seeds cfg.seed .. cfg.seed+N-1 (N>1: in RUN_DIR/seedK) and report mean ± std
    per stage; writes RUN_DIR/results.json and prints the stage table."""
    out = Path(out)
    if seeds < 1:
        raise DigaError(f"--seeds must be at least 1, got {seeds}")
    _check_fresh(out, resume, resume_needs_run=True)
    if seeds == 1:
        stages = run_pipeline(cfg, out, resume)["stages"]
        if init_world().is_main:
            print_stage_table(stages, title="DiGA stages: mIoU (%)")
        return stages
    runs = []
    for k in range(seeds):
        seed = cfg.seed + k
        folder = out / f"seed{seed}"
        runs.append((seed, run_pipeline(cfg.model_copy(update={"seed": seed}), folder,
                                        resume and _started(folder))["stages"]))
    stages = aggregate_seeds(runs)
    if init_world().is_main:
        write_results(out / "results.json", stages, seeds=[s for s, _ in runs], config=cfg.model_dump(mode="json"))
        print_stage_table(stages, title=f"DiGA stages, mean of {seeds} seeds: mIoU (%)")
    return stages


def aggregate_seeds(runs: list[tuple[int, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Per stage name: mean and sample standard deviation of the mIoUs over seeds."""
    names = [s["name"] for s in runs[0][1]]
    out = []
    for name in names:
        per = [(seed, next(s for s in st if s["name"] == name)) for seed, st in runs]

        (src_m, src_s), (tgt_m, tgt_s) = _mean_std(per, "source_val_miou"), _mean_std(per, "target_val_miou")
        out.append(stage_entry(name, src_m, tgt_m, source_val_miou_std=src_s, target_val_miou_std=tgt_s,
                               per_seed=[{"seed": seed, "source_val_miou": s.get("source_val_miou"),
                                          "target_val_miou": s.get("target_val_miou"),
                                          "checkpoint": s.get("checkpoint")} for seed, s in per]))
    return out


def _mean_std(per: list[tuple[int, dict[str, Any]]], key: str) -> tuple[float | None, float | None]:
    vals = [s[key] for _, s in per if s.get(key) is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)
