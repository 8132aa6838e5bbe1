"""Streaming confusion-matrix segmentation metrics: mIoU (percent), per-class IoU, pixel accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .data.labels import CLASS_NAMES, IGNORE_INDEX, SUBSETS


class ConfusionMatrix:
    """Accumulates a (C,C) confusion matrix (rows = ground truth, cols = prediction); 255 is ignored."""

    def __init__(self, num_classes: int = 19, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        pred = torch.as_tensor(pred).reshape(-1).long()
        target = torch.as_tensor(target).reshape(-1).long()
        if pred.shape != target.shape:
            raise ValueError(f"prediction has {pred.numel()} pixels but target has {target.numel()}")
        keep = (target != self.ignore_index) & (target >= 0) & (target < self.num_classes)
        idx = target[keep] * self.num_classes + pred[keep].clamp(0, self.num_classes - 1)
        self.mat += torch.bincount(idx, minlength=self.num_classes**2).view(self.num_classes, self.num_classes).cpu()

    def iou(self) -> np.ndarray:
        """Per-class IoU in percent; NaN for classes absent from both ground truth and prediction."""
        m = self.mat.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        return (iou * 100).numpy()

    def miou(self, subset: Sequence[int] | int | None = None) -> float:
        """Mean IoU (percent) over classes present, optionally restricted to a subset (16, 13, or ids)."""
        iou = self.iou()
        if subset is not None:
            ids = SUBSETS[subset] if isinstance(subset, int) else tuple(subset)
            iou = iou[list(ids)]
        return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.mat.sum().item()
        return 100.0 * self.mat.diag().sum().item() / total if total else float("nan")

    def summary(self, subset: int | None = None) -> dict:
        iou = self.iou()
        names = CLASS_NAMES if self.num_classes == len(CLASS_NAMES) else tuple(str(i) for i in range(self.num_classes))
        out = {
            "miou": self.miou(subset),
            "pixel_accuracy": self.pixel_accuracy(),
            "per_class": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou, strict=True)},
            "num_classes_evaluated": int(np.sum(~np.isnan(iou))),
        }
        if self.num_classes == len(CLASS_NAMES):  # SYNTHIA's protocols, recorded with every evaluation
            out["miou_16"], out["miou_13"] = self.miou(16), self.miou(13)
        return out
