"""Tensor conversion, normalisation and the geometric training augmentation (scale, crop, flip).

Batches are a pure function of (seed, step): a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import Sample, SegDataset
from .labels import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H,W,3) uint8 -> (3,H,W) float in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def normalize(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """(B,3,H,W) in [0,1] -> normalised by per-channel mean/std."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def step_rng(seed: int, step: int, stream: str = "") -> np.random.Generator:
    """A generator determined by (seed, step, stream) alone."""
    digest = hashlib.sha256(f"{seed}/{step}/{stream}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def scale_crop_flip(image: torch.Tensor, label: torch.Tensor | None, crop: tuple[int, int],
                    scale: tuple[float, float], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random rescale, crop (padding with 0 / ignore) and horizontal flip of one (3,H,W) image and (H,W) label."""
    s = float(rng.uniform(*scale))
    h, w = image.shape[-2:]
    nh, nw = max(int(round(h * s)), 1), max(int(round(w * s)), 1)
    image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    if label is not None:
        label = F.interpolate(label[None, None].float(), size=(nh, nw), mode="nearest")[0, 0].to(label.dtype)
    ch, cw = crop
    ph, pw = max(ch - nh, 0), max(cw - nw, 0)
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph), value=0.0)
        if label is not None:
            label = F.pad(label, (0, pw, 0, ph), value=IGNORE_INDEX)
    y0 = int(rng.integers(0, image.shape[-2] - ch + 1))
    x0 = int(rng.integers(0, image.shape[-1] - cw + 1))
    image = image[:, y0:y0 + ch, x0:x0 + cw]
    if label is not None:
        label = label[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        image = image.flip(-1)
        label = label.flip(-1) if label is not None else None
    return image.contiguous(), (label.contiguous() if label is not None else None)


class CachedDataset:
    """Keeps decoded samples in memory (the embedded benchmark fits easily); reads each file once."""

    def __init__(self, dataset: SegDataset) -> None:
        self.dataset = dataset
        self._cache: dict[int, Sample] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Sample:
        if i not in self._cache:
            self._cache[i] = self.dataset[i]
        return self._cache[i]


class BatchSampler:
    """Deterministic training batches: epoch permutations and augmentations drawn from (seed, step)."""

    def __init__(self, dataset: SegDataset | CachedDataset, batch_size: int, crop: tuple[int, int],
                 scale: tuple[float, float], seed: int, stream: str = "") -> None:
        self.data = dataset if isinstance(dataset, CachedDataset) else CachedDataset(dataset)
        self.batch_size, self.crop, self.scale, self.seed, self.stream = batch_size, crop, scale, seed, stream
        self._perms: dict[int, np.ndarray] = {}

    def indices(self, step: int) -> list[int]:
        n = len(self.data)
        out = []
        for k in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, pos = divmod(k, n)
            if epoch not in self._perms:
                self._perms = {epoch: step_rng(self.seed, epoch, f"perm{self.stream}").permutation(n)}
            out.append(int(self._perms[epoch][pos]))
        return out

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
        """(B,3,h,w) float images in [0,1], (B,h,w) int64 labels (or None), dataset indices."""
        rng = step_rng(self.seed, step, f"aug{self.stream}")
        idx = self.indices(step)
        images, labels = [], []
        for i in idx:
            s = self.data[i]
            lab = torch.from_numpy(s.label.astype(np.int64)) if s.label is not None else None
            img, lab = scale_crop_flip(to_tensor(s.image), lab, self.crop, self.scale, rng)
            images.append(img)
            labels.append(lab)
        lab_t = torch.stack(labels) if labels[0] is not None else None
        return torch.stack(images), lab_t, idx
