"""Activation checkpointing: recompute each backbone block in the backward pass instead of keeping its
activations. DeepLabV2-ResNet101 on the authors' 512x896 crops keeps ~30 GB of activations per step
(three source images, two views); with its 33 bottlenecks recomputed it fits a 24 GB card or host, at
about a third more compute. BatchNorm statistics are updated once per forward, as without it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import DigaError


def recompute_units(model: nn.Module) -> list[nn.Module]:
    """The blocks a model recomputes (its `recompute_units()`), or a clear error if it names none."""
    units = getattr(model, "recompute_units", None)
    if units is None:
        raise DigaError(f"model {type(model).__name__} does not support activation checkpointing; "
                        "set model.activation_checkpointing=false")
    return list(units())


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Make every recompute unit of `model` checkpoint its forward while training with gradients.
    Returns the number of units wrapped; calling it again wraps nothing twice."""
    wrapped = 0
    for unit in recompute_units(model):
        if getattr(unit, "_diga_recompute", False):
            continue
        unit.forward = _checkpointed(unit, unit.forward)
        unit._diga_recompute = True
        wrapped += 1
    return wrapped


def _checkpointed(unit: nn.Module, forward):  # noqa: ANN001, ANN202 - a bound method in, its wrapper out
    def run(*args: torch.Tensor) -> torch.Tensor:
        if not (unit.training and torch.is_grad_enabled()):
            return forward(*args)
        return checkpoint(forward, *args, use_reentrant=False,
                          context_fn=lambda: (contextlib.nullcontext(), _frozen_batchnorm_stats(unit)))
    return run


@contextlib.contextmanager
def _frozen_batchnorm_stats(unit: nn.Module) -> Iterator[None]:
    """The recomputation runs the block's forward again: keep its BatchNorm running statistics as the
    first forward left them (it would otherwise move them twice per step)."""
    saved = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in unit.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, mean, var, count in saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
