"""`diga adapt online`: adapt a shipped model on an ordered stream of unlabelled frames."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import DigaError
from ..progress import console
from .adapt import adapt_app
from .common import above, parse_size, write_json

SHIPPED_HASH_KEY = "shipped_sha256"  # recorded in the adapter state: --resume refuses another --model


@adapt_app.command("online")
def online(
    model: Path = typer.Option(..., "--model", help="the shipped checkpoint (.safetensors)"),
    stream: str = typer.Option(..., "--stream",
                               help="frames in order: scenario:target (rendered by the benchmark), "
                                    "folder:PATH, cityscapes:PATH@split, synthetic:target@train, ..."),
    frames: int | None = typer.Option(None, "--frames", min=1, help="stop after N frames (scenario streams: length)"),
    segments: str | None = typer.Option(None, "--segments",
                                        help="condition changes, e.g. fog@0.5 or dusk@0.5,noise@100:130"),
    size: str = typer.Option("256x512", "--size", help="frame size HxW of scenario streams"),
    seed: int = typer.Option(0, "--seed", help="stream and update seed"),
    budget_ms: float | None = typer.Option(None, "--budget-ms", callback=above(0.0), help="per-frame time budget (predict + update)"),
    bn: str | None = typer.Option(None, "--bn", help="batch-norm handling: adapt (default: running statistics from the clean target crops), adapt-batch (from the training batch) or frozen"),
    no_safety: bool = typer.Option(False, "--no-safety", help="disable the health monitor and rollback"),
    source: str | None = typer.Option(None, "--source",
                                      help="labelled source split the vehicle carries as an anchor, e.g. "
                                           "gta5:PATH or synthetic:source@train (see OnlineConfig.source)"),
    centroids: Path | None = typer.Option(None, "--centroids",
                                          help="start from these centroids (else from the first frames)"),
    config: Path | None = typer.Option(None, "--config", help="YAML with any OnlineConfig setting"),
    state: Path | None = typer.Option(None, "--state", help="checkpoint the adapter state to this file"),
    checkpoint_every: int | None = typer.Option(None, "--checkpoint-every", min=1, help="frames between state saves"),
    resume: bool = typer.Option(False, "--resume", help="continue from --state (the stream is skipped ahead)"),
    window: int = typer.Option(20, "--window", min=1, help="frames per scored window"),
    compare_frozen: bool = typer.Option(True, "--compare-frozen/--no-compare-frozen",
                                        help="also score the frozen shipped model on labelled frames"),
    out_model: Path | None = typer.Option(None, "--out-model", help="write the adapted model here at the end"),
    plot: Path | None = typer.Option(None, "--plot", help="PNG of the per-window mIoU curve"),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch threads"),
    json_path: Path | None = typer.Option(None, "--json", help="results: windows, cost, actions, per frame"),
) -> None:
    """Online DiGA: predict every frame with the EMA teacher, adapt within the budget, roll back on collapse."""
    import torch

    from ..adapt.centroids import load_centroids
    from ..config import load_config
    from ..data.streams import FrameStream
    from ..io import file_sha256
    from ..models.checkpoint import load_checkpoint
    from ..online.adapter import OnlineAdapter, OnlineConfig
    from ..online.run import plot_windows, run_stream, window_checks

    if threads:
        torch.set_num_threads(threads)
    if resume and state is None:
        raise DigaError("--resume needs --state FILE (the adapter state written by an earlier run)")
    cfg = load_config(config, OnlineConfig, {"budget_ms": budget_ms, "bn": bn, "seed": seed,
                                             "checkpoint_every": checkpoint_every, "source": source,
                                             "safety.enabled": False if no_safety else None})
    fs = FrameStream(stream, frames, parse_size(size), segments, seed=seed)
    model_hash = file_sha256(model) if model.is_file() else None
    if resume:
        if not state.is_file():
            raise DigaError(f"--resume: the state file {state} does not exist; drop --resume to start from --model")
        adapter = OnlineAdapter.resume(state, cfg)
        saved_hash = adapter.meta.extra.get(SHIPPED_HASH_KEY)
        if saved_hash is None or saved_hash != model_hash:
            raise DigaError(f"--resume: {state} was saved while adapting another model (sha256 "
                            f"{str(saved_hash)[:12]}, --model {model} has {str(model_hash)[:12]}); pass the same "
                            "--model or start a new --state")
        console.print(f"resumed at frame {adapter.frame_index} from {state}")
    else:
        if state is not None and state.exists():
            raise DigaError(f"--state {state} already exists; pass --resume to continue it or choose a new file")
        shipped, meta = load_checkpoint(model, fold=True)
        meta = meta.model_copy(update={"extra": {**meta.extra, SHIPPED_HASH_KEY: model_hash}})
        cents = load_centroids(centroids) if centroids else None
        adapter = OnlineAdapter(shipped, cfg, meta=meta, centroids=cents, state_path=state)
    frozen = load_checkpoint(model, fold=True)[0] if compare_frozen else None
    start = adapter.frame_index
    result = run_stream(adapter, fs.frames(start), len(fs) - start, frozen, window)
    result["stream"] = fs.describe()
    result["config"] = cfg.model_dump(mode="json")
    result["checks"] = window_checks(result)
    if state is not None:
        adapter.save_state(state)
    if out_model is not None:
        result["adapted_model"] = str(adapter.save_model(out_model))
    if plot is not None:
        plot_windows(result, plot, f"{stream} {segments or ''}".strip())
    write_json(json_path, result)
    s = result["adapter"]
    console.print(f"{result['frames']} frames: {s['updates']} updates, {s['skip_budget']} over budget, "
                  f"{s['skip_unhealthy']} unhealthy, {s['rollbacks']} rollbacks; cost median "
                  f"{result['cost_ms']['median']:.1f} ms, p99 {result['cost_ms']['p99']:.1f} ms", highlight=False)
    ov = result["overall"]
    if ov["adapted_miou"] is not None:
        console.print(f"mIoU on the frames seen: adapted {ov['adapted_miou']:.2f}"
                      + (f", frozen {ov['frozen_miou']:.2f}" if ov["frozen_miou"] is not None else ""),
                      highlight=False)
