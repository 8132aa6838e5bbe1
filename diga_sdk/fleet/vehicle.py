"""One vehicle of the fleet: its own stream and an online adapter whose state lives on its disk,
so a round can run in any process (a Flower simulation actor, a client process) and pick up where
the last round stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from ..config import DigaConfig
from ..data.streams import FrameStream
from ..online.adapter import OnlineAdapter, OnlineConfig, open_adapter


class FleetSpec(DigaConfig):
    """What every vehicle and the server agree on."""

    checkpoint: str  # the shipped model
    workdir: str  # vehicles keep their adapter state under workdir/vehicle-N/
    vehicles: int = Field(3, ge=1)
    rounds: int = Field(3, ge=1)
    frames_per_round: int = Field(20, ge=1)
    stream: str = "scenario:target"  # scenario (each vehicle its own seed) or a dataset spec (split between vehicles)
    segments: str | None = None
    size: tuple[int, int] = (256, 512)
    seed: int = 0
    threads: int = 1
    online: OnlineConfig = Field(default_factory=OnlineConfig)

    @property
    def frames_per_vehicle(self) -> int:
        return self.rounds * self.frames_per_round


class VehicleStream:
    """Vehicle `vid`'s frames: a scenario rendered with its own seed, or every N-th frame of a dataset."""

    def __init__(self, spec: FleetSpec, vid: int) -> None:
        n = spec.frames_per_vehicle
        if spec.stream.startswith("scenario:"):
            self.base = FrameStream(spec.stream, n, spec.size, spec.segments, seed=spec.seed * 1000 + vid + 1)
            self.stride, self.offset = 1, 0
        else:
            self.base = FrameStream(spec.stream, None, spec.size, spec.segments, seed=spec.seed)
            self.stride, self.offset = spec.vehicles, vid
        self.n = min(n, (len(self.base) - self.offset + self.stride - 1) // self.stride)

    def __len__(self) -> int:
        return self.n

    def frame(self, i: int):
        return self.base.frame(self.offset + i * self.stride)


def state_file(spec: FleetSpec, vid: int) -> Path:
    return Path(spec.workdir) / f"vehicle-{vid}" / "online_state.safetensors"


def drive(spec: FleetSpec, vid: int, n_frames: int, fleet_state: dict[str, torch.Tensor] | None = None,
          fleet_centroids: torch.Tensor | None = None, fleet_counts: torch.Tensor | None = None,
          persist: bool = True) -> tuple[OnlineAdapter, dict[str, Any]]:
    """Resume vehicle `vid`, take the fleet model if given, adapt on its next `n_frames` frames, save."""
    torch.set_num_threads(spec.threads)
    path = state_file(spec, vid)
    adapter = open_adapter(spec.checkpoint, spec.online, state=path if persist else None, resume=persist)
    if fleet_state is not None:
        has_c = fleet_counts is not None and float(fleet_counts.sum()) > 0
        adapter.load_weights(fleet_state, fleet_centroids if has_c else None,
                             (fleet_counts > 0) if has_c else None)
    stream = VehicleStream(spec, vid)
    before_updates = adapter.counters["updates"]
    before_pixels = adapter.pixel_counts.clone()
    start = adapter.frame_index
    stop = min(start + n_frames, len(stream))
    for i in range(start, stop):
        adapter.process(stream.frame(i).image)
    info = {"vehicle": vid, "frames": stop - start, "updates": adapter.counters["updates"] - before_updates,
            "rollbacks": adapter.counters["rollbacks"], "frame_index": adapter.frame_index,
            "pixels": adapter.pixel_counts - before_pixels}
    if persist:
        adapter.save_state(path)
    return adapter, info
