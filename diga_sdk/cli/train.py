"""`diga train`, `diga eval`, `diga demo`: supervised baselines, evaluation, the main demo job."""

from __future__ import annotations

from pathlib import Path

import typer

from ..config import TrainConfig, config_to_yaml, load_config
from ..errors import DigaError
from ..outputs import claim_run_folder
from ..progress import console, log
from . import app
from .common import dumps, write_json


@app.command("train")
def train(
    out: Path = typer.Option(..., "--out", help="run folder (config, checkpoints, results)"),
    config: Path | None = typer.Option(None, "--config", help="YAML with any TrainConfig setting"),
    preset: str | None = typer.Option(None, "--preset", help="the authors' recipe: gta5-cityscapes or "
                                      "synthia-cityscapes (see `diga config show`)"),
    sets: list[str] = typer.Option([], "--set", help="override any setting by its dotted key (repeatable)"),
    workers: int | None = typer.Option(None, "--workers", min=0,
                                       help="loader worker processes (default: the cores, at most 4; 0: none)"),
    strict: bool = typer.Option(False, "--strict", help="refuse images without a label file instead of skipping"),
    oracle: bool = typer.Option(False, "--oracle", help="train on target labels (the upper bound)"),
    data: str | None = typer.Option(None, "--data", help="training dataset spec (overrides the config)"),
    model: str | None = typer.Option(None, "--model", help="model name: light, fast or deeplabv2_r101"),
    steps: int | None = typer.Option(None, "--steps", min=1),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1),
    seed: int | None = typer.Option(None, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="continue from the run folder's last state"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a run already in --out"),
    json_path: Path | None = typer.Option(None, "--json", help="write the evaluation results here"),
) -> None:
    """Train a source-only model (or, with --oracle, a target-trained one) and evaluate it."""
    from ..adapt.supervised import train_supervised
    from ..evaluate_specs import evaluate_specs

    overrides = {"train_data": data or ("synthetic:target@train" if oracle else None), "model.name": model,
                 "steps": steps, "batch_size": batch_size, "seed": seed, "data.workers": workers,
                 "data.strict": strict or None}
    cfg = load_config(config, TrainConfig, overrides, preset=preset, sets=sets)
    if preset is not None and cfg.train_data.startswith("synthetic"):
        raise DigaError(f"--preset {preset} is a recipe for the real datasets: give --data "
                        f"{preset.split('-')[0]}:PATH")
    claim_run_folder(out, resume=resume, overwrite=overwrite)
    console.print(config_to_yaml(cfg), highlight=False)
    stage = "oracle" if oracle else "source_only"
    ckpt = train_supervised(cfg, out, stage=stage, resume=resume)
    if cfg.val_data:
        log.info("evaluating on %s", ", ".join(cfg.val_data))
    results = {"checkpoint": str(ckpt), "stage": stage,
               "eval": evaluate_specs(ckpt, cfg.val_data, scales=cfg.eval.scales)}
    write_json(out / "results.json", results)
    write_json(json_path, results)
    for spec, res in results["eval"].items():
        console.print(f"{spec}: mIoU {res['miou']:.2f}")


@app.command("eval")
def evaluate_cmd(
    model: Path = typer.Option(..., "--model", help="checkpoint (.safetensors)"),
    data: list[str] = typer.Option(..., "--data", help="labelled dataset spec(s)"),
    subset: int = typer.Option(19, "--subset", help="classes to average over: 19, 16 or 13 (SYNTHIA protocols)"),
    scales: str = typer.Option("1.0", "--scales", help="comma-separated input scales whose logits are max-fused, "
                               "e.g. 1.0,0.5 as the authors report"),
    json_path: Path | None = typer.Option(None, "--json"),
) -> None:
    """Evaluate a checkpoint on one or more sets: one table, per-class IoU, mIoU and pixel accuracy per set."""
    from ..evaluate_specs import print_eval_columns
    from ..segmenter import Segmenter

    if subset not in (19, 16, 13):
        raise typer.BadParameter(f"{subset} is not one of 19, 16, 13", param_hint="'--subset'")
    try:
        scale_list = tuple(float(v) for v in scales.split(","))
    except ValueError:
        raise typer.BadParameter(f"{scales!r}: write comma-separated numbers, e.g. 1.0,0.5",
                                 param_hint="'--scales'") from None
    if not scale_list or any(v <= 0 for v in scale_list):
        raise typer.BadParameter(f"{scales!r}: every scale must be positive", param_hint="'--scales'")
    seg = Segmenter(model)
    results = {spec: seg.val(spec, subset, scales=scale_list).to_dict() for spec in data}
    print_eval_columns(results, title=f"{model.name}: IoU (%)")
    write_json(json_path, results)
    if json_path is None:
        console.print(dumps({k: {"miou": v["miou"]} for k, v in results.items()}), highlight=False)


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out"),
    quick: bool = typer.Option(False, "--quick", help="a tiny run for smoke tests (minutes -> seconds)"),
    model: str = typer.Option("light", "--model", help="light (the default) or fast (the two-branch real-time model)"),
) -> None:
    """The main job on the embedded benchmark: baselines (and adaptation stages), table, results.json."""
    from ..demo import run_demo

    run_demo(out, quick=quick, model=model)
