"""The vehicle as a Flower client (`NumPyClient`): take the fleet model, adapt on the next frames of
its own stream, send back weights, centroids and the counts that weight them."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.client import NumPyClient

from .params import arrays_to_state, state_to_arrays
from .vehicle import FleetSpec, drive


class VehicleClient(NumPyClient):
    """fit(): FedAvg weight = frames adapted (optimizer updates taken) this round."""

    def __init__(self, spec: FleetSpec, vehicle_id: int) -> None:
        self.spec, self.vid = spec, vehicle_id

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        from ..models.checkpoint import load_checkpoint

        template = load_checkpoint(self.spec.checkpoint, fold=True)[0].state_dict()
        state, cents, counts = arrays_to_state(parameters, template)
        fresh = int(config.get("round", 1)) == 1
        adapter, info = drive(self.spec, self.vid, int(config.get("frames_per_round", self.spec.frames_per_round)),
                              None if fresh else state, None if fresh else cents, None if fresh else counts)
        arrays = state_to_arrays(adapter.weights(), adapter.centroids, info["pixels"])
        metrics = {"vehicle": self.vid, "frames": info["frames"], "updates": info["updates"],
                   "rollbacks": info["rollbacks"]}
        return arrays, int(info["updates"]), metrics


def client_for(spec: FleetSpec, vehicle_id: int):
    """The Flower `Client` object of vehicle `vehicle_id`."""
    return VehicleClient(spec, vehicle_id).to_client()
