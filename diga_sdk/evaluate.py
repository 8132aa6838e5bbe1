"""Inference over a labelled dataset into a confusion matrix (full images, logits upsampled to labels)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.datasets import SegDataset
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, CachedDataset, normalize, to_tensor
from .errors import DigaError
from .kernels import upsample_argmax
from .metrics import ConfusionMatrix


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(B,3,H,W) images in [0,1] -> (B,C,H,W) logits upsampled bilinearly to the input size."""
    logits, _ = model(normalize(images, mean, std))
    return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def predict_labels(model: nn.Module, images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(B,3,H,W) images in [0,1] -> (B,H,W) int64 labels: the argmax of `predict_logits`, fused (the
    full-resolution logits are never formed)."""
    logits, _ = model(normalize(images, mean, std))
    return upsample_argmax(logits, images.shape[-2:])


@torch.no_grad()
def evaluate(model: nn.Module, dataset: SegDataset | CachedDataset, batch_size: int = 4, device: str = "cpu",
             progress: Callable[[int, int], None] | None = None) -> ConfusionMatrix:
    """Run `model` over every labelled sample and accumulate the confusion matrix."""
    base = dataset.dataset if isinstance(dataset, CachedDataset) else dataset
    if not base.has_labels:
        raise DigaError(f"dataset at {base.root} has no labels; evaluation needs a labelled split")
    was_training = model.training
    model.eval()
    meta = getattr(model, "diga_meta", None)
    mean, std = (meta.mean, meta.std) if meta is not None else (IMAGENET_MEAN, IMAGENET_STD)
    cm = ConfusionMatrix(getattr(model, "num_classes", 19))
    n = len(dataset)
    for start in range(0, n, batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, n))]
        sizes = {s.image.shape for s in samples}
        groups = [samples] if len(sizes) == 1 else [[s] for s in samples]
        for group in groups:
            x = torch.stack([to_tensor(s.image) for s in group]).to(device)
            pred = predict_labels(model, x, mean, std).cpu()
            for p, s in zip(pred, group, strict=True):
                cm.update(p, torch.from_numpy(s.label))
        if progress:
            progress(min(start + batch_size, n), n)
    model.train(was_training)
    return cm
