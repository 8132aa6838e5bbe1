"""The EMA teacher: an exponential moving average of the student, parameters AND BatchNorm buffers."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..models.folded import FoldedCopy


def ema_decay(step: int, max_decay: float = 0.999) -> float:
    """a = min(1 - 1/(step+1), max_decay): the teacher follows the student closely at first."""
    return min(1.0 - 1.0 / (step + 1), max_decay)


class EMATeacher:
    """teacher = a*teacher + (1-a)*student after every step; no gradients ever reach it.

    Float buffers (BatchNorm running mean/var) are averaged like parameters and integer buffers
    (num_batches_tracked) copied, so the teacher in eval mode never keeps the statistics it was
    created with (the pitfall that collapses a warm-up).

    The forward runs on a BatchNorm-folded channels-last copy (`models.folded`), refreshed from
    `module` before every call, so whatever changed `module` (an update, a rollback, a resume) is seen.
    """

    def __init__(self, student: nn.Module, fold: bool = True, fold_channels_last: bool = True) -> None:
        self.module = copy.deepcopy(_unwrap(student))
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._folded = FoldedCopy.build(self.module, fold_channels_last) if fold else None

    @torch.no_grad()
    def update(self, student: nn.Module, step: int, max_decay: float = 0.999) -> float:
        a = ema_decay(step, max_decay)
        src = _unwrap(student)
        t_params = list(self.module.parameters())
        s_params = [p.detach() for p in src.parameters()]
        torch._foreach_mul_(t_params, a)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - a)
        for t, s in zip(self.module.buffers(), src.buffers(), strict=True):
            if t.dtype.is_floating_point:
                t.mul_(a).add_(s.detach(), alpha=1.0 - a)
            else:
                t.copy_(s)
        return a

    def folded_graph(self) -> nn.Module | None:
        """The BN-folded copy's graph with the module's current weights (None when it could not be traced)."""
        if self._folded is None:
            return None
        self._folded.refresh()
        return self._folded.gm

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, features) in fp32; with `bf16`, the forward runs under bf16 autocast."""
        if self._folded is not None:
            self._folded.refresh()
        forward = self._folded if self._folded is not None else self.module
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits, feats = forward(x)
        return logits.float().contiguous(), feats.float().contiguous()


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
