"""Training-only auxiliary segmentation heads: the deep supervision BiSeNet, DDRNet and PIDNet train with.

A model with one runs it only while a trainer collects it (`with auxiliary_outputs(model) as aux:`), in
training mode; trainers add `AUX_WEIGHT` x the same segmentation loss on those logits. Inference, export,
the EMA teacher and the online adapter never run it, so the deployed graph and its cost are unchanged, and
a checkpoint written without it still loads (`TRAINING_ONLY_PREFIX`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from .light import _cbr

AUX_WEIGHT = 0.4  # DDRNet's and PIDNet's weight on their auxiliary heads
TRAINING_ONLY_PREFIX = "aux_head."  # state-dict keys a checkpoint may lack


class AuxiliaryHead(nn.Module):
    """3x3 conv-BN-ReLU to `mid` channels, then a 1x1 classifier: logits of an inner stage."""

    def __init__(self, cin: int, mid: int, num_classes: int) -> None:
        super().__init__()
        self.block = _cbr(cin, mid, 3)
        self.classifier = nn.Conv2d(mid, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.block(x))


class AuxiliarySink:
    """Where a model's forward leaves its auxiliary logits while a trainer collects them."""

    def __init__(self) -> None:
        self.sink: list[torch.Tensor] | None = None

    def emit(self, module: nn.Module, head: nn.Module, x: torch.Tensor) -> None:
        if self.sink is not None and module.training:
            self.sink.append(head(x))


@contextmanager
def auxiliary_outputs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the auxiliary logits of the forwards run inside the block (an empty list for a model
    without auxiliary heads, or one in eval mode)."""
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    aux = getattr(inner, "auxiliary", None)
    collected: list[torch.Tensor] = []
    if not isinstance(aux, AuxiliarySink):
        yield collected
        return
    aux.sink = collected
    try:
        yield collected
    finally:
        aux.sink = None
