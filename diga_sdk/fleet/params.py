"""The wire format between vehicles and the fleet server: a model state dict in its key order,
then the class centroids (C,D) and the per-class pixel counts behind them (C,), as numpy arrays."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DigaError


def state_to_arrays(state: dict[str, torch.Tensor], centroids: torch.Tensor, counts: torch.Tensor) -> list[np.ndarray]:
    """[tensors in state-dict order..., centroids, counts]."""
    arrays = [v.detach().cpu().numpy().copy() for v in state.values()]
    return arrays + [centroids.detach().cpu().float().numpy().copy(), counts.detach().cpu().double().numpy().copy()]


def arrays_to_state(arrays: list[np.ndarray], template: dict[str, torch.Tensor]
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Inverse of `state_to_arrays` against a state dict with the same keys: (state, centroids, counts)."""
    keys = list(template)
    if len(arrays) != len(keys) + 2:
        raise DigaError(f"fleet message has {len(arrays)} arrays, expected {len(keys) + 2} for this model; "
                        "every vehicle and the server must run the same model")
    state = {}
    for k, a in zip(keys, arrays, strict=False):
        t = torch.from_numpy(np.asarray(a))
        if t.shape != template[k].shape:
            raise DigaError(f"fleet weights for {k} have shape {tuple(t.shape)}, expected {tuple(template[k].shape)}")
        state[k] = t.to(template[k].dtype)
    return state, torch.from_numpy(np.asarray(arrays[-2])).float(), torch.from_numpy(np.asarray(arrays[-1])).double()


def aggregate(updates: list[tuple[list[np.ndarray], float]], previous_centroids: np.ndarray | None
              ) -> list[np.ndarray]:
    """FedAvg of the weights weighted by each vehicle's frames adapted; centroids per class weighted by
    the pixel counts each vehicle accumulated for it (a class no vehicle saw keeps its previous value);
    counts summed. `updates` is [(arrays, frames_adapted)]."""
    if not updates:
        raise DigaError("no vehicle returned an update")
    n = np.array([max(float(w), 0.0) for _, w in updates])
    if n.sum() <= 0:
        n = np.ones_like(n)  # no vehicle adapted: plain mean (they all hold the same weights anyway)
    n = n / n.sum()
    n_weights = len(updates[0][0]) - 2
    out: list[np.ndarray] = []
    for j in range(n_weights):
        stacked = np.stack([np.asarray(u[0][j], dtype=np.float64) for u in updates])
        avg = np.tensordot(n, stacked, axes=1)
        dtype = np.asarray(updates[0][0][j]).dtype
        out.append((np.rint(avg) if np.issubdtype(dtype, np.integer) else avg).astype(dtype))
    cents = np.stack([np.asarray(u[0][-2], dtype=np.float64) for u in updates])  # (K,C,D)
    counts = np.stack([np.asarray(u[0][-1], dtype=np.float64) for u in updates])  # (K,C)
    total = counts.sum(0)
    merged = np.einsum("kc,kcd->cd", counts, cents) / np.maximum(total, 1e-12)[:, None]
    if previous_centroids is not None:
        merged = np.where((total > 0)[:, None], merged, previous_centroids)
    else:
        merged = np.where((total > 0)[:, None], merged, cents.mean(0))
    return out + [merged.astype(np.float32), total]
