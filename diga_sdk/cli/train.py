"""`diga train`, `diga eval`, `diga demo`: supervised baselines, evaluation, the main demo job."""

from __future__ import annotations

from pathlib import Path

import typer

from ..config import TrainConfig, config_to_yaml, load_config
from ..progress import console
from . import app
from .common import dumps, write_json


@app.command("train")
def train(
    out: Path = typer.Option(..., "--out", help="run folder (config, checkpoints, results)"),
    config: Path | None = typer.Option(None, "--config", help="YAML with any TrainConfig setting"),
    oracle: bool = typer.Option(False, "--oracle", help="train on target labels (the upper bound)"),
    data: str | None = typer.Option(None, "--data", help="training dataset spec (overrides the config)"),
    model: str | None = typer.Option(None, "--model", help="model name, e.g. light or deeplabv2_r101"),
    steps: int | None = typer.Option(None, "--steps"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    seed: int | None = typer.Option(None, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="continue from the run folder's last state"),
    json_path: Path | None = typer.Option(None, "--json", help="write the evaluation results here"),
) -> None:
    """Train a source-only model (or, with --oracle, a target-trained one) and evaluate it."""
    from ..adapt.supervised import train_supervised
    from ..evaluate_specs import evaluate_specs

    overrides = {"train_data": data or ("synthetic:target@train" if oracle else None), "model.name": model,
                 "steps": steps, "batch_size": batch_size, "seed": seed}
    cfg = load_config(config, TrainConfig, overrides)
    console.print(config_to_yaml(cfg), highlight=False)
    stage = "oracle" if oracle else "source_only"
    ckpt = train_supervised(cfg, out, stage=stage, resume=resume)
    results = {"checkpoint": str(ckpt), "stage": stage, "eval": evaluate_specs(ckpt, cfg.val_data)}
    write_json(out / "results.json", results)
    write_json(json_path, results)
    for spec, res in results["eval"].items():
        console.print(f"{spec}: mIoU {res['miou']:.2f}")


@app.command("eval")
def evaluate_cmd(
    model: Path = typer.Option(..., "--model", help="checkpoint (.safetensors)"),
    data: list[str] = typer.Option(..., "--data", help="labelled dataset spec(s)"),
    subset: int = typer.Option(19, help="classes to average over: 19, 16 or 13 (SYNTHIA protocols)"),
    json_path: Path | None = typer.Option(None, "--json"),
) -> None:
    """Evaluate a checkpoint on one or more sets: one table, per-class IoU, mIoU and pixel accuracy per set."""
    from ..evaluate_specs import evaluate_specs, print_eval_columns

    results = evaluate_specs(model, data, subset=subset)
    print_eval_columns(results, title=f"{model.name}: IoU (%)")
    write_json(json_path, results)
    if json_path is None:
        console.print(dumps({k: {"miou": v["miou"]} for k, v in results.items()}), highlight=False)


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out"),
    quick: bool = typer.Option(False, "--quick", help="a tiny run for smoke tests (minutes -> seconds)"),
) -> None:
    """The main job on the embedded benchmark: baselines (and adaptation stages), table, results.json."""
    from ..demo import run_demo

    run_demo(out, quick=quick)
