"""Fused ops of the adaptation's hot path. Each public function dispatches by device:
CUDA -> Triton kernel (if installed), CPU -> the fast CPU path; `DIGA_KERNELS=reference` forces the
PyTorch reference (the specification) everywhere. Nothing heavy is imported here: numba and triton
load on the first call that needs them."""

from __future__ import annotations

from .ops import (
    backend_for,
    centroid_sums,
    choose_classes,
    class_mix,
    consensus_select,
    symmetric_distillation_loss,
    upsample_argmax,
)

__all__ = ["backend_for", "centroid_sums", "choose_classes", "class_mix", "consensus_select",
           "symmetric_distillation_loss", "upsample_argmax"]
