"""Run a fleet: on Flower's simulation engine (one machine), or as a server process and vehicle
processes on the network (the same client and strategy code). Plus the single-vehicle baseline and
the evaluation that compares them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..adapt.centroids import save_centroids
from ..errors import DigaError
from ..io import atomic_write_json
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..progress import log
from .params import arrays_to_state, state_to_arrays
from .vehicle import FleetSpec, drive

FLEET_MODEL = "fleet_model.safetensors"


def initial_arrays(spec: FleetSpec) -> list[np.ndarray]:
    """The shipped model's weights, with no centroids yet (zero counts: vehicles calibrate their own)."""
    model, meta = load_checkpoint(spec.checkpoint, fold=True)
    d = getattr(model, "feature_dim", 256)
    return state_to_arrays(model.state_dict(), torch.zeros(meta.num_classes, d), torch.zeros(meta.num_classes))


def save_fleet_model(spec: FleetSpec, arrays: list[np.ndarray], out: str | Path, stage: str) -> Path:
    """Write the fleet model (checkpoint) and its centroids (centroids.safetensors) into `out`."""
    model, meta = load_checkpoint(spec.checkpoint, fold=True)
    state, cents, counts = arrays_to_state(arrays, model.state_dict())
    model.load_state_dict(state)
    out = Path(out)
    ckpt = save_checkpoint(model, out / FLEET_MODEL, meta.model_copy(update={"stage": stage}))
    save_centroids(out / "centroids.safetensors", cents, counts > 0, counts.round().long())
    return ckpt


def _round_saver(spec: FleetSpec, out: Path, record: dict[str, Any]):
    def on_round(rnd: int, arrays: list[np.ndarray], info: dict[str, Any]) -> None:
        save_fleet_model(spec, arrays, out, f"fleet@round{rnd}")
        record.setdefault("rounds", []).append(info)
        atomic_write_json(out / "fleet_rounds.json", record)
        log.info("fleet round %d: %d frames adapted, vehicles %s", rnd, info["frames_adapted"],
                 [(v.get("vehicle"), v.get("updates"), v.get("rollbacks")) for v in info["vehicles"]])
    return on_round


def simulate(spec: FleetSpec, out: str | Path, cpus_per_vehicle: float = 1.0) -> dict[str, Any]:
    """The fleet on Flower's simulation engine (Ray backend): N virtual vehicles, `rounds` rounds."""
    from flwr.client import ClientApp
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.simulation import run_simulation

    from .client import client_for
    from .strategy import FleetStrategy

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"mode": "simulation", "spec": spec.model_dump(mode="json")}
    strategies: list[FleetStrategy] = []

    def server_fn(context) -> ServerAppComponents:  # noqa: ANN001
        strategy = FleetStrategy(initial_arrays(spec), spec.vehicles, spec.frames_per_round,
                                 _round_saver(spec, out, record))
        strategies.append(strategy)
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=spec.rounds))

    def client_fn(context):  # noqa: ANN001
        return client_for(spec, int(context.node_config["partition-id"]))

    t0 = time.perf_counter()
    run_simulation(server_app=ServerApp(server_fn=server_fn), client_app=ClientApp(client_fn=client_fn),
                   num_supernodes=spec.vehicles,
                   backend_config={"client_resources": {"num_cpus": cpus_per_vehicle, "num_gpus": 0.0},
                                   "init_args": {"include_dashboard": False, "log_to_driver": False}})
    if not strategies or len(record.get("rounds", [])) != spec.rounds:
        raise DigaError(f"the Flower simulation ended after {len(record.get('rounds', []))} of {spec.rounds} "
                        "rounds; see the log above")
    record["wall_s"] = time.perf_counter() - t0
    record["fleet_model"] = str(out / FLEET_MODEL)
    atomic_write_json(out / "fleet_rounds.json", record)
    return record


def serve(spec: FleetSpec, out: str | Path, address: str = "127.0.0.1:8088") -> dict[str, Any]:
    """The fleet server as its own process (gRPC on `address`); returns after the last round."""
    import flwr.server

    from .strategy import FleetStrategy

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"mode": "processes", "address": address, "spec": spec.model_dump(mode="json")}
    strategy = FleetStrategy(initial_arrays(spec), spec.vehicles, spec.frames_per_round,
                             _round_saver(spec, out, record))
    t0 = time.perf_counter()
    flwr.server.start_server(server_address=address, config=flwr.server.ServerConfig(num_rounds=spec.rounds),
                             strategy=strategy)
    if len(record.get("rounds", [])) != spec.rounds:
        raise DigaError(f"the fleet server stopped after {len(record.get('rounds', []))} of {spec.rounds} rounds")
    record["wall_s"] = time.perf_counter() - t0
    record["fleet_model"] = str(out / FLEET_MODEL)
    atomic_write_json(out / "fleet_rounds.json", record)
    return record


def vehicle(spec: FleetSpec, vehicle_id: int, address: str = "127.0.0.1:8088") -> None:
    """One vehicle as its own process: connect to the fleet server and serve its rounds."""
    import flwr.client

    from .client import client_for

    if not 0 <= vehicle_id < spec.vehicles:
        raise DigaError(f"--vehicle-id {vehicle_id} is outside 0..{spec.vehicles - 1}")
    flwr.client.start_client(server_address=address, client=client_for(spec, vehicle_id), insecure=True,
                             max_retries=60, max_wait_time=120.0)


def single_vehicles(spec: FleetSpec, out: str | Path) -> list[Path]:
    """Each vehicle alone on the same frames, no aggregation: the baseline the fleet must beat."""
    out = Path(out)
    paths = []
    solo = spec.model_copy(update={"workdir": str(out / "solo")})
    for vid in range(spec.vehicles):
        adapter, _ = drive(solo, vid, spec.frames_per_vehicle, persist=False)
        paths.append(adapter.save_model(out / "solo" / f"vehicle-{vid}.safetensors"))
    return paths
