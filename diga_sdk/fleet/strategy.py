"""The fleet server's strategy: Flower's FedAvg with DiGA's aggregation (weights by frames adapted,
centroids by pixel counts) and a hook that receives every round's fleet model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAvg

from ..errors import DigaError
from .params import aggregate


class FleetStrategy(FedAvg):
    """Every vehicle trains every round; `latest` holds the fleet model's arrays after each round."""

    def __init__(self, initial: list[np.ndarray], vehicles: int, frames_per_round: int,
                 on_round: Callable[[int, list[np.ndarray], dict[str, Any]], None] | None = None) -> None:
        super().__init__(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=vehicles, min_evaluate_clients=0,
                         min_available_clients=vehicles, initial_parameters=ndarrays_to_parameters(initial),
                         on_fit_config_fn=lambda rnd: {"round": rnd, "frames_per_round": frames_per_round},
                         accept_failures=False)
        self.latest = initial
        self.on_round = on_round
        self.rounds: list[dict[str, Any]] = []

    def aggregate_fit(self, server_round, results, failures):  # noqa: ANN001 (Flower's signature)
        if failures:
            raise DigaError(f"fleet round {server_round}: {len(failures)} vehicle(s) failed: {failures[0]!r}")
        updates = [(parameters_to_ndarrays(fit.parameters), fit.num_examples) for _, fit in results]
        prev_counts = self.latest[-1]
        prev = self.latest[-2] if float(np.sum(prev_counts)) > 0 else None
        merged = aggregate(updates, prev)
        self.latest = merged
        vehicles = sorted((dict(fit.metrics) for _, fit in results), key=lambda m: m.get("vehicle", 0))
        info = {"round": server_round, "vehicles": vehicles,
                "frames_adapted": int(sum(fit.num_examples for _, fit in results)),
                "classes_with_centroids": int(np.sum(merged[-1] > 0))}
        self.rounds.append(info)
        if self.on_round:
            self.on_round(server_round, merged, info)
        return ndarrays_to_parameters(merged), {"frames_adapted": info["frames_adapted"]}
