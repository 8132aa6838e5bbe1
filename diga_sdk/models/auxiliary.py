"""Training-only auxiliary heads (deep supervision, as in DDRNet / PIDNet / BiSeNetV2).

A model may classify an intermediate map as well while it trains: its forward then leaves those logits
in `model.aux_logits` (None in eval mode or without gradients; `take_auxiliary_logits`), every trainer adds `AUX_WEIGHT` x the
same segmentation loss on them, and nothing else changes: `forward` still returns (logits, features), the
head costs nothing at inference and is not in exported graphs. Its weights are in the checkpoints; a
checkpoint saved before the model had one loads with the head freshly initialised.
"""

from __future__ import annotations

import torch
import torch.nn as nn

AUX_WEIGHT = 0.4  # DDRNet's weight for its auxiliary head


def take_auxiliary_logits(model: nn.Module) -> torch.Tensor | None:
    """The auxiliary logits of `model`'s last training forward (DDP-wrapped or not), or None; the model lets
    go of them (a module holding a tensor of the autograd graph could not be deep-copied)."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    aux = getattr(inner, "aux_logits", None)
    if aux is not None:
        inner.aux_logits = None
    return aux


def training_only_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict key prefixes of the training-only heads (a checkpoint may lack them)."""
    return tuple(getattr(model, "training_only", ()))
