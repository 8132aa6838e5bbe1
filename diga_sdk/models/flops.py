"""FLOPs of a segmenter's forward pass at a given input size, counted by torch's FlopCounterMode
(2 FLOPs per multiply-accumulate; convolutions and matmuls, the ops that dominate)."""

from __future__ import annotations

import torch
import torch.nn as nn


def model_gflops(model: nn.Module, size: tuple[int, int], batch: int = 1) -> float:
    """GFLOP of one forward pass of `model` on a (batch, 3, H, W) input (the model's own outputs, at 1/8)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(batch, 3, *size))
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


def flops_by_part(model: nn.Module, size: tuple[int, int]) -> dict[str, float]:
    """GFLOP per top-level child module (where a model spends its compute), at batch 1."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, *size))
    root = type(model).__name__ + "."
    counts = {n[len(root):]: sum(v.values()) / 1e9 for n, v in counter.get_flop_counts().items() if n.startswith(root)}
    out: dict[str, float] = {}
    for part in {n.split(".")[0] for n in counts}:
        names = [n for n in counts if n == part or n.startswith(part + ".")]
        depth = min(n.count(".") for n in names)  # a ModuleList is never called: sum its members
        out[part] = sum(counts[n] for n in names if n.count(".") == depth)
    return out


__all__ = ["flops_by_part", "model_gflops"]
