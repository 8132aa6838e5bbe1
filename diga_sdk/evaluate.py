"""Inference over a labelled dataset into a confusion matrix (full images, logits upsampled to labels,
optionally max-fused over scales as the authors report; outputs mapped to Cityscapes train IDs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.datasets import SegDataset
from .data.loader import iter_samples
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, to_tensor
from .errors import DigaError
from .kernels import upsample_argmax
from .metrics import ConfusionMatrix


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   scales: Sequence[float] = (1.0,)) -> torch.Tensor:
    """(B,3,H,W) images in [0,1] -> (B,C,H,W) logits upsampled bilinearly to the input size; with several
    `scales`, the element-wise max over the rescaled inputs' upsampled logits."""
    size = images.shape[-2:]
    fused = None
    for s in scales:
        x = images if s == 1.0 else F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)
        logits, _ = model(normalize(x, mean, std))
        up = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        fused = up if fused is None else torch.maximum(fused, up)
    if fused is None:
        raise DigaError("evaluation needs at least one scale")
    return fused


@torch.no_grad()
def predict_labels(model: nn.Module, images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   scales: Sequence[float] = (1.0,)) -> torch.Tensor:
    """(B,3,H,W) images in [0,1] -> (B,H,W) int64 labels: the argmax of `predict_logits`; at one scale
    fused (the full-resolution logits are never formed)."""
    if tuple(scales) != (1.0,):
        return predict_logits(model, images, mean, std, scales).argmax(1)
    logits, _ = model(normalize(images, mean, std))
    return upsample_argmax(logits, images.shape[-2:])


@torch.no_grad()
def evaluate(model: nn.Module, dataset: SegDataset, batch_size: int = 4, device: str = "cpu",
             progress: Callable[[int, int], None] | None = None, scales: Sequence[float] = (1.0,)
             ) -> ConfusionMatrix:
    """Run `model` over every labelled sample and accumulate the 19-class confusion matrix (a model
    with fewer outputs has them mapped to their train IDs by its metadata)."""
    if not dataset.has_labels:
        raise DigaError(f"dataset at {dataset.root} has no labels; evaluation needs a labelled split")
    was_training = model.training
    model.eval()
    meta = getattr(model, "diga_meta", None)
    mean, std = (meta.mean, meta.std) if meta is not None else (IMAGENET_MEAN, IMAGENET_STD)
    train_ids = torch.tensor(meta.output_train_ids()) if meta is not None and meta.classes is not None else None
    cm = ConfusionMatrix(19 if train_ids is not None else getattr(model, "num_classes", 19))
    n = len(dataset)
    reader = iter_samples(dataset)
    for start in range(0, n, batch_size):
        samples = [next(reader) for _ in range(start, min(start + batch_size, n))]
        sizes = {s.image.shape for s in samples}
        groups = [samples] if len(sizes) == 1 else [[s] for s in samples]
        for group in groups:
            x = torch.stack([to_tensor(s.image) for s in group]).to(device)
            pred = predict_labels(model, x, mean, std, scales).cpu()
            if train_ids is not None:
                pred = train_ids[pred]
            for p, s in zip(pred, group, strict=True):
                cm.update(p, torch.from_numpy(s.label))
        if progress:
            progress(min(start + batch_size, n), n)
    model.train(was_training)
    return cm
