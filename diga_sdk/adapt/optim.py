"""The optimiser every stage uses: SGD + momentum, poly learning-rate decay, a head multiplier."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import OptimConfig


def head_prefixes(model: nn.Module, scope: str) -> tuple[str, ...]:
    """Parameter-name prefixes the head multiplier covers: the classifier, or the model's whole head."""
    if scope == "head":
        return tuple(getattr(model, "HEAD_PREFIXES", ("classifier",)))
    return ("classifier",)


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    """SGD over the trainable parameters; the head group (cfg.head_scope) gets lr x head_lr_mult."""
    prefixes = head_prefixes(model, cfg.head_scope)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head = [p for n, p in trainable if n.startswith(prefixes)]
    head_ids = {id(p) for p in head}
    body = [p for _, p in trainable if id(p) not in head_ids]
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
