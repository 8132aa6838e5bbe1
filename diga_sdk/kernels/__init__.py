"""Fused ops of the adaptation's hot path. Each public function dispatches by device:
CUDA -> Triton kernel (if installed), CPU -> the fast CPU path; `DIGA_KERNELS=reference` forces the
PyTorch reference (the specification) everywhere."""

from __future__ import annotations

from .reference import (
    centroid_sums_ref as centroid_sums,
    choose_classes_ref as choose_classes,
    class_mix_ref as class_mix,
    consensus_select_ref as consensus_select,
    symmetric_distillation_loss_ref as symmetric_distillation_loss,
)

__all__ = ["centroid_sums", "choose_classes", "class_mix", "consensus_select", "symmetric_distillation_loss"]
