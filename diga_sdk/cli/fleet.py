"""`diga fleet simulate|server|vehicle`: fleet aggregation of online adaptation on Flower."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..errors import DigaError
from ..progress import console
from . import app
from .common import dumps, parse_size, write_json

fleet_app = typer.Typer(help="Fleet aggregation on Flower: vehicles adapt online, the server averages them.",
                        no_args_is_help=True)
app.add_typer(fleet_app, name="fleet")


def _spec(model: Path, out: Path, vehicles: int, rounds: int, frames: int, stream: str, segments: str | None,
          size: str, seed: int, config: Path | None, budget_ms: float | None, threads: int,
          source: str | None = None):
    from ..config import load_config
    from ..fleet.vehicle import FleetSpec
    from ..models.checkpoint import read_meta
    from ..online.adapter import OnlineConfig

    read_meta(model)  # a missing or corrupt checkpoint fails here, before any process starts
    online = load_config(config, OnlineConfig, {"budget_ms": budget_ms, "source": source})
    return FleetSpec(checkpoint=str(model), workdir=str(out / "vehicles"), vehicles=vehicles, rounds=rounds,
                     frames_per_round=frames, stream=stream, segments=segments, size=parse_size(size), seed=seed,
                     threads=threads, online=online)


_MODEL = typer.Option(..., "--model", help="the shipped checkpoint every vehicle starts from")
_OUT = typer.Option(..., "--out", help="run folder: fleet model, per-round JSON, vehicle states")
_VEHICLES = typer.Option(3, "--vehicles", help="number of vehicles")
_ROUNDS = typer.Option(3, "--rounds", help="aggregation rounds")
_FRAMES = typer.Option(20, "--frames-per-round", help="frames each vehicle adapts on per round")
_STREAM = typer.Option("scenario:target", "--stream",
                       help="scenario:target (each vehicle its own frames) or a dataset spec split between vehicles")
_SEGMENTS = typer.Option(None, "--segments", help="condition segments, e.g. fog@0.5 (see diga adapt online)")
_SIZE = typer.Option("256x512", "--size", help="frame size HxW of scenario streams")
_SEED = typer.Option(0, "--seed")
_CONFIG = typer.Option(None, "--config", help="YAML with any OnlineConfig setting")
_BUDGET = typer.Option(None, "--budget-ms", help="per-frame time budget on each vehicle")
_THREADS = typer.Option(1, "--threads", help="torch threads per vehicle")
_SOURCE = typer.Option(None, "--source", help="labelled source split each vehicle carries as an anchor "
                                              "(OnlineConfig.source), e.g. synthetic:source@train")


@fleet_app.command("simulate")
def simulate_cmd(
    model: Path = _MODEL, out: Path = _OUT, vehicles: int = _VEHICLES, rounds: int = _ROUNDS,
    frames: int = _FRAMES, stream: str = _STREAM, segments: str | None = _SEGMENTS, size: str = _SIZE,
    seed: int = _SEED, config: Path | None = _CONFIG, budget_ms: float | None = _BUDGET, threads: int = _THREADS,
    source: str | None = _SOURCE,
    eval_spec: str | None = typer.Option("synthetic:target@val", "--eval",
                                         help="labelled split scoring the fleet model (none: 'none')"),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline",
                                  help="also adapt each vehicle alone on the same frames and compare"),
    cpus_per_vehicle: float = typer.Option(1.0, "--cpus-per-vehicle", help="Ray resources per virtual vehicle"),
    json_path: Path | None = typer.Option(None, "--json"),
) -> None:
    """Run N vehicles on Flower's simulation engine; score the fleet model against single vehicles."""
    from ..fleet.run import simulate, single_vehicles

    spec = _spec(model, out, vehicles, rounds, frames, stream, segments, size, seed, config, budget_ms, threads, source)
    if (out / "vehicles").exists() and any((out / "vehicles").iterdir()):
        raise DigaError(f"{out}/vehicles holds vehicle states of an earlier run; choose another --out or delete it")
    record: dict[str, Any] = simulate(spec, out, cpus_per_vehicle)
    if baseline:
        record["single_vehicle_models"] = [str(p) for p in single_vehicles(spec, out)]
    if eval_spec and eval_spec != "none":
        record["eval"] = _score(record, model, eval_spec)
        _print_scores(record["eval"])
    write_json(out / "fleet.json", record)
    write_json(json_path, record)


def _score(record: dict[str, Any], shipped: Path, spec: str) -> dict[str, Any]:
    import numpy as np

    from ..evaluate_specs import evaluate_specs

    def miou(p) -> float:
        return evaluate_specs(p, [spec])[spec]["miou"]

    res: dict[str, Any] = {"data": spec, "shipped": miou(shipped), "fleet": miou(record["fleet_model"])}
    if record.get("single_vehicle_models"):
        res["single_vehicles"] = [miou(p) for p in record["single_vehicle_models"]]
        res["single_vehicle_mean"] = float(np.mean(res["single_vehicles"]))
        res["fleet_minus_single_mean"] = res["fleet"] - res["single_vehicle_mean"]
    return res


def _print_scores(ev: dict[str, Any]) -> None:
    console.print(f"{ev['data']} mIoU: shipped {ev['shipped']:.2f}, fleet {ev['fleet']:.2f}"
                  + (f", single vehicles {[round(v, 2) for v in ev['single_vehicles']]} "
                     f"(mean {ev['single_vehicle_mean']:.2f})" if "single_vehicles" in ev else ""), highlight=False)


@fleet_app.command("server")
def server_cmd(
    model: Path = _MODEL, out: Path = _OUT, vehicles: int = _VEHICLES, rounds: int = _ROUNDS,
    frames: int = _FRAMES, stream: str = _STREAM, segments: str | None = _SEGMENTS, size: str = _SIZE,
    seed: int = _SEED, config: Path | None = _CONFIG, budget_ms: float | None = _BUDGET, threads: int = _THREADS,
    source: str | None = _SOURCE,
    address: str = typer.Option("127.0.0.1:8088", "--address", help="gRPC address to listen on"),
    json_path: Path | None = typer.Option(None, "--json"),
) -> None:
    """The fleet server as a process: waits for --vehicles vehicles, runs --rounds rounds, writes the fleet model."""
    from ..fleet.run import serve

    spec = _spec(model, out, vehicles, rounds, frames, stream, segments, size, seed, config, budget_ms, threads, source)
    record = serve(spec, out, address)
    write_json(json_path, record)
    console.print(dumps({k: v for k, v in record.items() if k != "spec"}), highlight=False)


@fleet_app.command("vehicle")
def vehicle_cmd(
    model: Path = _MODEL, out: Path = _OUT, vehicles: int = _VEHICLES, rounds: int = _ROUNDS,
    frames: int = _FRAMES, stream: str = _STREAM, segments: str | None = _SEGMENTS, size: str = _SIZE,
    seed: int = _SEED, config: Path | None = _CONFIG, budget_ms: float | None = _BUDGET, threads: int = _THREADS,
    source: str | None = _SOURCE,
    vehicle_id: int = typer.Option(..., "--vehicle-id", help="0..vehicles-1: which stream this vehicle drives"),
    address: str = typer.Option("127.0.0.1:8088", "--address", help="the fleet server's gRPC address"),
) -> None:
    """One vehicle as a process: adapt online on its own stream, exchange models with the fleet server."""
    from ..fleet.run import vehicle

    spec = _spec(model, out, vehicles, rounds, frames, stream, segments, size, seed, config, budget_ms, threads, source)
    vehicle(spec, vehicle_id, address)
