"""`diga adapt dg` and `diga adapt semi`: the method's domain-generalisation and semi-supervised uses."""

from __future__ import annotations

from pathlib import Path

import typer

from ..config import DGConfig, SemiConfig, is_benchmark_spec, load_config
from ..errors import DigaError
from .adapt import SET_HELP, WORKERS_HELP, adapt_app
from .common import write_json


@adapt_app.command("dg")
def dg(
    source: str | None = typer.Option(None, "--source", help="labelled source dataset spec (the only training data)"),
    eval_specs: list[str] = typer.Option(None, "--eval", help="labelled dataset spec to evaluate on (repeatable)"),
    model: str | None = typer.Option(None, "--model", help="model name, e.g. light or deeplabv2_r101"),
    out: Path = typer.Option(..., "--out", help="run folder"),
    config: Path | None = typer.Option(None, "--config", help="YAML with any DGConfig setting"),
    preset: str | None = typer.Option(None, "--preset", help="the authors' recipe: gta5-dg (see `diga config show`)"),
    sets: list[str] = typer.Option([], "--set", help=SET_HELP),
    steps: int | None = typer.Option(None, "--steps", help="training steps of the DG stage"),
    seed: int | None = typer.Option(None, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="continue the run folder after a crash"),
    json_path: Path | None = typer.Option(None, "--json", help='write {"stages": [{"name", "eval": {spec: miou}}]}'),
    workers: int | None = typer.Option(None, "--workers", min=0, help=WORKERS_HELP),
) -> None:
    """Domain generalisation: source-only, then DG from it (clean/photometric-view distillation, no target
    image); every stage evaluated on every --eval set."""
    from ..adapt.dg import run_dg

    cfg = load_config(config, DGConfig, {"source": source, "eval": eval_specs or None, "model.name": model,
                                         "dg.steps": steps, "seed": seed, "data.workers": workers},
                      preset=preset, sets=sets)
    if preset is not None and (is_benchmark_spec(cfg.source) or any(is_benchmark_spec(e) for e in cfg.eval)):
        raise DigaError(f"--preset {preset} is a recipe for the real datasets: give --source gta5:PATH and "
                        "--eval cityscapes:PATH@val (and any other --eval set)")
    write_json(json_path, run_dg(cfg, out, resume).to_json())


@adapt_app.command("semi")
def semi(
    target: str | None = typer.Option(None, "--target", help="labelled dataset spec to split (e.g. cityscapes:PATH)"),
    labelled_fraction: float | None = typer.Option(None, "--labelled-fraction",
                                                   help="share of --target kept labelled, drawn by --split-seed"),
    labelled_list: Path | None = typer.Option(None, "--labelled-list",
                                              help="the labelled images, one path (or its tail) per line"),
    split_seed: int | None = typer.Option(None, "--split-seed", help="seed of the labelled share"),
    target_val: str | None = typer.Option(None, "--target-val", help="labelled validation spec"),
    model: str | None = typer.Option(None, "--model", help="model name, e.g. light or deeplabv2_r101"),
    out: Path = typer.Option(..., "--out", help="run folder (split.txt, stages, results.json)"),
    config: Path | None = typer.Option(None, "--config", help="YAML with any SemiConfig setting"),
    rounds: int | None = typer.Option(None, "--rounds", help="extra refinement rounds"),
    seed: int | None = typer.Option(None, "--seed", help="training seed"),
    resume: bool = typer.Option(False, "--resume", help="continue the run folder after a crash"),
    json_path: Path | None = typer.Option(None, "--json", help="write one entry per stage here"),
    workers: int | None = typer.Option(None, "--workers", min=0, help=WORKERS_HELP),
) -> None:
    """Semi-supervised: supervised on the labelled share, then warm-up and consensus self-training with the
    unlabelled rest as the target; every stage evaluated on --target-val."""
    from ..adapt.semi import run_semi

    if labelled_fraction is not None and labelled_list is not None:
        raise DigaError("pass --labelled-fraction or --labelled-list, not both")
    cfg = load_config(config, SemiConfig, {
        "target": target, "target_val": target_val, "split_seed": split_seed,
        "labelled_fraction": labelled_fraction, "labelled_list": str(labelled_list) if labelled_list else None,
        "adapt.model.name": model, "adapt.rounds": rounds, "adapt.seed": seed, "adapt.data.workers": workers})
    write_json(json_path, run_semi(cfg, out, resume).to_json())
