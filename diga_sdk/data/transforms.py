"""Tensor conversion, normalisation and the per-step random generator that training batches come from
(the batches themselves: `data.loader`)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H,W,3) uint8 -> (3,H,W) float in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def normalize(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """(B,3,H,W) in [0,1] -> normalised by per-channel mean/std."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def step_rng(seed: int, step: int, stream: str = "") -> np.random.Generator:
    """A generator determined by (seed, step, stream) alone."""
    digest = hashlib.sha256(f"{seed}/{step}/{stream}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))
