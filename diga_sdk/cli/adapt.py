"""`diga adapt ...`: the DiGA pipeline and each of its stages on its own, the learned translator,
the ablation job, and `diga bench steps` (the step-cost benchmark)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..config import AdaptConfig, load_config
from ..errors import DigaError
from ..outputs import claim_run_folder
from ..progress import console, log
from . import app
from .bench import bench_app
from .common import above, dumps, write_json

adapt_app = typer.Typer(help="DiGA adaptation: the whole pipeline (no sub-command) or one stage.")
app.add_typer(adapt_app, name="adapt")


PRESET_HELP = "the authors' recipe: gta5-cityscapes or synthia-cityscapes (see `diga config show`)"
SET_HELP = "override any setting by its dotted key, e.g. --set warmup.steps=2 (repeatable)"
WORKERS_HELP = "loader worker processes per data stream (default: the cores, at most 4; 0: none)"


def _config(config: Path | None, overrides: dict[str, Any], preset: str | None = None,
            sets: list[str] | None = None) -> AdaptConfig:
    cfg = load_config(config, AdaptConfig, overrides, preset=preset, sets=sets)
    if preset is not None and (cfg.source.startswith("synthetic") or cfg.target.startswith("synthetic")):
        raise DigaError(f"--preset {preset} is a recipe for the real datasets: give --source "
                        f"{preset.split('-')[0]}:PATH and --target cityscapes:PATH@train")
    return cfg


@adapt_app.callback(invoke_without_command=True)
def adapt(
    ctx: typer.Context,
    source: str | None = typer.Option(None, "--source", help="labelled source dataset spec"),
    target: str | None = typer.Option(None, "--target", help="unlabelled target training dataset spec"),
    target_val: str | None = typer.Option(None, "--target-val", help="labelled target validation spec"),
    source_val: str | None = typer.Option(None, "--source-val", help="labelled source validation spec"),
    model: str | None = typer.Option(None, "--model", help="model name: light, fast or deeplabv2_r101"),
    out: Path | None = typer.Option(None, "--out", help="run folder (checkpoints, pseudo-labels, results)"),
    config: Path | None = typer.Option(None, "--config", help="YAML with any AdaptConfig setting"),
    preset: str | None = typer.Option(None, "--preset", help=PRESET_HELP),
    sets: list[str] = typer.Option([], "--set", help=SET_HELP),
    workers: int | None = typer.Option(None, "--workers", min=0, help=WORKERS_HELP),
    strict: bool = typer.Option(False, "--strict", help="refuse images without a label file instead of skipping"),
    init: str | None = typer.Option(None, "--init", help="start warm-up from this checkpoint (else train source-only)"),
    translator: str | None = typer.Option(None, "--translator", help="fourier or learned"),
    rounds: int | None = typer.Option(None, "--rounds", min=0, help="extra refinement rounds"),
    seed: int | None = typer.Option(None, "--seed"),
    seeds: int = typer.Option(1, "--seeds", min=1, help="run N seeds and report mean ± std per stage"),
    select_best: bool = typer.Option(False, "--select-best",
                                     help="hand on each stage's best snapshot by target-val mIoU (uses target labels)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run folder after a crash"),
    json_path: Path | None = typer.Option(None, "--json", help="write one entry per stage here"),
) -> None:
    """Run the whole pipeline: (source-only) -> translator -> warm-up -> pseudo-labels -> centroids ->
    self-training -> rounds, evaluating every stage on target-val."""
    if ctx.invoked_subcommand is not None:
        return
    if out is None:
        raise DigaError("diga adapt needs --out RUN_DIR (and --source/--target/--target-val or a --config)")
    from ..adapt.pipeline import run_seeds

    cfg = _config(config, {"source": source, "target": target, "target_val": target_val, "source_val": source_val,
                           "model.name": model, "init_checkpoint": init, "translator.kind": translator,
                           "rounds": rounds, "seed": seed, "select_best": select_best or None,
                           "data.workers": workers, "data.strict": strict or None}, preset, sets)
    log.info("evaluation sets: target-val %s, source-val %s", cfg.target_val or "none (give --target-val)",
             cfg.source_val or "none")
    stages = run_seeds(cfg, out, seeds, resume)
    write_json(json_path, {"stages": stages, "seeds": seeds, "checkpoint_selection":
                           "best_target_val_uses_target_labels" if cfg.select_best else "last"})


@adapt_app.command("warmup")
def warmup(
    init: str = typer.Option(..., "--init", help="checkpoint to start from (e.g. a source-only model)"),
    out: Path = typer.Option(..., "--out", help="stage folder"),
    config: Path | None = typer.Option(None, "--config"),
    preset: str | None = typer.Option(None, "--preset", help=PRESET_HELP),
    sets: list[str] = typer.Option([], "--set", help=SET_HELP),
    workers: int | None = typer.Option(None, "--workers", min=0, help=WORKERS_HELP),
    source: str | None = typer.Option(None, "--source"),
    target: str | None = typer.Option(None, "--target", help="target images (style only; no labels are read)"),
    steps: int | None = typer.Option(None, "--steps", min=1),
    no_mix: bool = typer.Option(False, "--no-mix", help="ablation: no cross-domain mixture"),
    no_distil: bool = typer.Option(False, "--no-distil", help="ablation: no symmetric distillation"),
    resume: bool = typer.Option(False, "--resume", help="continue the stage in --out"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a stage already in --out"),
    json_path: Path | None = typer.Option(None, "--json"),
) -> None:
    """Warm-up only: symmetric distillation + cross-domain mixture on the source."""
    from ..adapt.pipeline import stage_train

    cfg = _config(config, {"source": source, "target": target, "warmup.steps": steps, "data.workers": workers,
                           "warmup.mix": False if no_mix else None, "warmup.distil": False if no_distil else None},
                  preset, sets)
    claim_run_folder(out, resume=resume, overwrite=overwrite, what="stage")
    rec = stage_train("warmup", cfg, cfg.warmup, init, out, resume)
    _report(rec, json_path)


@adapt_app.command("pseudo")
def pseudo(
    model: str = typer.Option(..., "--model", help="checkpoint that labels the target"),
    out: Path = typer.Option(..., "--out", help="folder for labels/*.png"),
    target: str | None = typer.Option(None, "--target"),
    config: Path | None = typer.Option(None, "--config"),
    sets: list[str] = typer.Option([], "--set", help=SET_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace pseudo-labels already in --out"),
    json_path: Path | None = typer.Option(None, "--json"),
) -> None:
    """Pseudo-label every target training image (multi-scale max fusion, PNG files)."""
    from ..adapt.pipeline import stage_pseudo

    cfg = _config(config, {"target": target}, sets=sets)
    claim_run_folder(out, resume=False, overwrite=overwrite, what="set of pseudo-labels")
    _report(stage_pseudo(cfg, model, out), json_path)


@adapt_app.command("centroids")
def centroids(
    model: str = typer.Option(..., "--model", help="checkpoint whose features define the centroids"),
    out: Path = typer.Option(..., "--out", help="folder for centroids.safetensors"),
    target: str | None = typer.Option(None, "--target"),
    config: Path | None = typer.Option(None, "--config"),
    sets: list[str] = typer.Option([], "--set", help=SET_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace centroids already in --out"),
    json_path: Path | None = typer.Option(None, "--json"),
) -> None:
    """Class centroids: mean 256-d feature per predicted class over the target training set."""
    from ..adapt.pipeline import stage_centroids

    cfg = _config(config, {"target": target}, sets=sets)
    claim_run_folder(out, resume=False, overwrite=overwrite, what="set of centroids")
    _report(stage_centroids(cfg, model, out), json_path)


@adapt_app.command("recalibrate")
def recalibrate(
    model: str = typer.Option(..., "--model", help="checkpoint whose BatchNorm statistics to re-estimate"),
    out: Path = typer.Option(..., "--out", help="folder for bn_recalibrated.safetensors"),
    target: str | None = typer.Option(None, "--target", help="unlabelled target frames (dataset spec)"),
    target_val: str | None = typer.Option(None, "--target-val", help="labelled target validation spec"),
    config: Path | None = typer.Option(None, "--config"),
    sets: list[str] = typer.Option([], "--set", help=SET_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a recalibrated model already in --out"),
    json_path: Path | None = typer.Option(None, "--json"),
) -> None:
    """BatchNorm recalibration (AdaBN): the model's running statistics re-estimated on target frames at their
    stored size, no labels read; the weights and the input checkpoint stay as they were."""
    from ..adapt.pipeline import evaluate_checkpoint, stage_recalibrate

    cfg = _config(config, {"target": target, "target_val": target_val}, sets=sets)
    claim_run_folder(out, resume=False, overwrite=overwrite, what="recalibrated model")
    rec = stage_recalibrate(cfg, model, out)
    cfg = cfg.model_copy(update={"source_val": None})  # the statistics are the target's now
    _report({**rec, **evaluate_checkpoint(rec["checkpoint"], cfg)}, json_path)


@adapt_app.command("selftrain")
def selftrain(
    init: str = typer.Option(..., "--init", help="checkpoint to start from (the warm-up model)"),
    pseudo_dir: Path = typer.Option(..., "--pseudo", help="folder written by `diga adapt pseudo`"),
    out: Path = typer.Option(..., "--out", help="stage folder"),
    centroids_file: Path | None = typer.Option(None, "--centroids", help="centroids.safetensors (consensus)"),
    selection: str | None = typer.Option(None, "--selection", help="consensus (default), threshold or none"),
    threshold: float | None = typer.Option(None, "--threshold", callback=above(0.0, 1.0),
                                           help="with --selection threshold: keep pixels with max prob >= it"),
    config: Path | None = typer.Option(None, "--config"),
    preset: str | None = typer.Option(None, "--preset", help=PRESET_HELP),
    sets: list[str] = typer.Option([], "--set", help=SET_HELP),
    workers: int | None = typer.Option(None, "--workers", min=0, help=WORKERS_HELP),
    source: str | None = typer.Option(None, "--source"),
    target: str | None = typer.Option(None, "--target"),
    steps: int | None = typer.Option(None, "--steps", min=1),
    resume: bool = typer.Option(False, "--resume", help="continue the stage in --out"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a stage already in --out"),
    json_path: Path | None = typer.Option(None, "--json"),
) -> None:
    """Self-training with threshold-free bilateral-consensus pseudo-labels (or the threshold baseline)."""
    from ..adapt.distill import SelfTrainInputs
    from ..adapt.pipeline import stage_train

    cfg = _config(config, {"source": source, "target": target, "selftrain.steps": steps, "data.workers": workers,
                           "selection.kind": selection, "selection.threshold": threshold}, preset, sets)
    if cfg.selection.kind == "consensus" and centroids_file is None:
        raise DigaError("consensus selection needs --centroids (from `diga adapt centroids`), "
                        "or pass --selection threshold")
    claim_run_folder(out, resume=resume, overwrite=overwrite, what="stage")
    inputs = SelfTrainInputs(pseudo_dir, centroids_file, cfg.selection)
    _report(stage_train("selftrain", cfg, cfg.selftrain, init, out, resume, inputs), json_path)


@adapt_app.command("translator")
def translator_cmd(
    out: Path = typer.Option(..., "--out", help="folder for translator.safetensors"),
    source: str | None = typer.Option(None, "--source"),
    target: str | None = typer.Option(None, "--target"),
    config: Path | None = typer.Option(None, "--config", help="YAML with any AdaptConfig setting (translator.*)"),
    sets: list[str] = typer.Option([], "--set", help=SET_HELP),
    steps: int | None = typer.Option(None, "--steps", min=1),
    vgg_weights: str | None = typer.Option(None, "--vgg-weights", help="VGG16 safetensors: adds the perceptual loss"),
    resume: bool = typer.Option(False, "--resume", help="continue the training in --out"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a translator already in --out"),
    workers: int | None = typer.Option(None, "--workers", min=0, help=WORKERS_HELP),
) -> None:
    """Train the learned source->target translator (CycleGAN-style)."""
    from ..adapt.pipeline import stage_translator

    cfg = _config(config, {"source": source, "target": target, "translator.steps": steps,
                           "translator.vgg_weights": vgg_weights, "data.workers": workers}, sets=sets)
    claim_run_folder(out, resume=resume, overwrite=overwrite, what="translator")
    rec = stage_translator(cfg, out, resume)
    console.print(f"translator written to {rec['checkpoint']}")


@adapt_app.command("ablation")
def ablation(
    out: Path = typer.Option(Path("runs/ablation"), "--out"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="skip stages already finished in --out"),
    model: str = typer.Option("light", "--model", help="model name: light (the default) or fast"),
) -> None:
    """The ablation table on the embedded benchmark: every DiGA step and the baselines, for one model."""
    from ..bench.ablation import run_ablation

    run_ablation(out, resume=resume, model=model)


@bench_app.command("steps")
def bench_steps(
    json_path: Path | None = typer.Option(Path("runs/bench/steps.json"), "--json"),
    repeats: int = typer.Option(10, "--repeats", min=1, help="timed steps per kind"),
    threads: int = typer.Option(2, "--threads", min=1),
) -> None:
    """Cost of one warm-up step and one self-training step against one source-only step (same batch)."""
    from ..bench.steps import run_step_benchmark

    run_step_benchmark(json_path, repeats=repeats, threads=threads)


def _report(rec: dict[str, Any], json_path: Path | None) -> None:
    write_json(json_path, rec)
    console.print(dumps({k: v for k, v in rec.items() if k != "target_val_per_class"}), highlight=False)
