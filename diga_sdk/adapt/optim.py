"""The optimiser every stage uses: SGD + momentum, poly learning-rate decay, a head multiplier."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import OptimConfig


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    head = [p for n, p in model.named_parameters() if n.startswith("classifier")]
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    return torch.optim.SGD(
        [{"params": body, "lr": cfg.lr, "lr_mult": 1.0},
         {"params": head, "lr": cfg.lr * cfg.head_lr_mult, "lr_mult": cfg.head_lr_mult}],
        lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def set_poly_lr(optimizer: torch.optim.Optimizer, cfg: OptimConfig, step: int, total: int) -> float:
    """lr = base * (1 - step/total) ** power, times each group's multiplier; returns the base lr."""
    lr = cfg.lr * (1.0 - min(step, total - 1) / total) ** cfg.poly_power
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
    return lr
