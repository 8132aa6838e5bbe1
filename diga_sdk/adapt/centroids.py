"""Class centroids in the segmenter's 256-d feature space: the initial pass over target-train and the
online momentum update of self-training. The per-class sums come from the fused `centroid_sums`."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import kernels
from ..data.datasets import SegDataset
from ..data.labels import IGNORE_INDEX
from ..data.transforms import normalize, to_tensor
from ..errors import DigaError
from ..io import atomic_path

FAR = 1e4  # a class never seen sits this far away in every dimension: it is never the nearest centroid


def labels_at(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B,H,W) integer labels -> (B,h,w) by nearest-neighbour sampling."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].to(labels.dtype)


def agreeing_labels(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Labels at the logits' resolution, kept where they equal the logits' argmax, else ignore."""
    lab = labels_at(labels, tuple(logits.shape[-2:])).long()
    return torch.where(lab == logits.argmax(1), lab, torch.full_like(lab, IGNORE_INDEX))


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int, min_pixels: int = 1
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample per-class mean features (B,C,D) and which of them count (B,C): >= min_pixels pixels."""
    sums, counts = kernels.centroid_sums(features.float(), labels, num_classes)
    valid = counts >= max(min_pixels, 1)
    return sums / counts.clamp_min(1)[..., None].to(sums.dtype), valid


def momentum_update(centroids: torch.Tensor, seen: torch.Tensor, means: torch.Tensor, valid: torch.Tensor,
                    momentum: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply c <- (1-m) c + m mean for every valid (sample, class) in sample order, in closed form.

    k valid samples of a class give c_k = (1-m)^k c_0 + sum_i m (1-m)^(k - r_i) mean_i (r_i its rank);
    a class not seen before takes its first mean as the starting point. Returns (centroids, seen).
    """
    valid = valid.to(centroids.device)
    means = means.to(centroids.device, centroids.dtype)
    first = valid & ~seen[None] & (valid.long().cumsum(0) == 1)  # first observation of an unseen class
    start = torch.where(first.any(0)[:, None], (means * first[..., None]).sum(0), centroids)
    upd = valid & ~first
    k = upd.sum(0)  # (C,)
    rank = upd.long().cumsum(0)  # (B,C)
    decay = 1.0 - momentum
    w = momentum * decay ** (k[None] - rank).to(centroids.dtype) * upd
    new = decay ** k.to(centroids.dtype)[:, None] * start + (w[..., None] * means).sum(0)
    return new, seen | valid.any(0)


class CentroidAccumulator:
    """Class centroids over a pass of target images; `result()` gives the centroids (C,D), which classes
    were seen (C,) and the counts (C,): pixels (mode "pixel": every pixel weighs the same) or images
    (mode "image": the mean of per-image class means, an image counting for a class once it has
    `min_pixels` pixels of it, as the authors' centroid pass)."""

    def __init__(self, num_classes: int, mode: str = "pixel", min_pixels: int = 1) -> None:
        self.num_classes, self.mode, self.min_pixels = num_classes, mode, min_pixels
        self.total: torch.Tensor | None = None
        self.counts = torch.zeros(num_classes, dtype=torch.long)

    def add(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """(B,D,h,w) features and (B,h,w) labels at the features' resolution."""
        sums, cnt = kernels.centroid_sums(feats.float(), labels, self.num_classes)
        if self.mode == "image":
            valid = cnt >= max(self.min_pixels, 1)
            sums = torch.where(valid[..., None], sums / cnt.clamp_min(1)[..., None].to(sums.dtype), 0.0)
            cnt = valid.long()
        self.total = sums.sum(0).cpu() if self.total is None else self.total + sums.sum(0).cpu()
        self.counts += cnt.sum(0).cpu()

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.total is None:
            raise DigaError("no images reached the centroid pass; the target set is empty")
        seen = self.counts > 0
        cents = torch.where(seen[:, None], self.total / self.counts.clamp_min(1)[:, None],
                            torch.full_like(self.total, FAR))
        return cents, seen, self.counts


@torch.no_grad()
def initial_centroids(model: nn.Module, dataset: SegDataset, num_classes: int, batch_size: int = 4,
                      device: str = "cpu", progress=None, mode: str = "pixel", min_pixels: int = 1
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over target-train: per class, the mean feature over pixels the model predicts as that
    class (at feature resolution). Returns (centroids (C,D), seen (C,), pixel counts (C,)).
    (The pipeline gets the same numbers from its pseudo-label pass, `pseudo.generate_pseudo_labels`.)"""
    model.eval()
    acc = CentroidAccumulator(num_classes, mode, min_pixels)
    n = len(dataset)
    for start in range(0, n, batch_size):
        x = torch.stack([to_tensor(dataset[i].image) for i in range(start, min(start + batch_size, n))]).to(device)
        logits, feats = model(normalize(x))
        acc.add(feats, logits.argmax(1))
        if progress:
            progress(min(start + batch_size, n), n)
    return acc.result()


def save_centroids(path: str | Path, centroids: torch.Tensor, seen: torch.Tensor, counts: torch.Tensor) -> Path:
    with atomic_path(path) as tmp:
        save_file({"centroids": centroids.float().contiguous(), "seen": seen.to(torch.uint8).contiguous(),
                   "counts": counts.long().contiguous()}, str(tmp))
    return Path(path)


def load_centroids(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids (C,D), seen (C,) bool) from a file written by `save_centroids`."""
    p = Path(path)
    if not p.is_file():
        raise DigaError(f"centroids file {p} not found; run `diga adapt centroids` first")
    try:
        t = load_file(str(p))
        return t["centroids"], t["seen"].bool()
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise DigaError(f"centroids file {p} is unreadable ({exc}); re-run `diga adapt centroids`") from None
