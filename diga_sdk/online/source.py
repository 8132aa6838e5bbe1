"""The source anchor of online adaptation: a small, fixed, seeded subset of the labelled source set
that the vehicle carries, so every online update keeps DiGA's self-training structure (source pixels
with ground truth pasted onto the target frame by ClassMix). Without it, online self-training learns
only from its own pseudo-labels and drifts or stalls; offline DiGA never trains without source CE.

The subset is a pure function of (spec, samples, seed): a resumed adapter reloads the same images, so
nothing of it goes into the state file. Kept as uint8 tensors (a 64-image 256x512 subset is 33 MB).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.datasets import open_dataset
from ..errors import DigaError


class SourceAnchor:
    """`SourceAnchor("synthetic:source@train", 64, seed)`; `crops(k, (h, w), rng)` -> images, labels."""

    def __init__(self, spec: str, samples: int, seed: int = 0) -> None:
        ds = open_dataset(spec)
        if not ds.has_labels:
            raise DigaError(f"source anchor {spec!r} has no labels; give a labelled source split (e.g. gta5:PATH)")
        n = min(samples, len(ds))
        pick = np.random.default_rng(seed).choice(len(ds), size=n, replace=False)
        self.spec = spec
        self.images: list[torch.Tensor] = []  # (3,H,W) uint8
        self.labels: list[torch.Tensor] = []  # (H,W) uint8 train IDs (255 = ignore)
        for i in sorted(pick.tolist()):
            s = ds[i]
            self.images.append(torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1).contiguous())
            self.labels.append(torch.from_numpy(s.label.astype(np.uint8)))
        self.min_hw = (min(x.shape[1] for x in self.images), min(x.shape[2] for x in self.images))

    def __len__(self) -> int:
        return len(self.images)

    def check_crop(self, crop: tuple[int, int]) -> None:
        if crop[0] > self.min_hw[0] or crop[1] > self.min_hw[1]:
            raise DigaError(f"source anchor {self.spec!r} has images of {self.min_hw[0]}x{self.min_hw[1]}, smaller "
                            f"than the update crop {crop[0]}x{crop[1]}; set crop to at most that size")

    def crops(self, k: int, size: tuple[int, int], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """k random (image, label) crops of `size`: (k,3,h,w) float in [0,1] and (k,h,w) int64."""
        ch, cw = size
        xs, ys = [], []
        for j in rng.choice(len(self), size=k, replace=k > len(self)).tolist():
            img, lab = self.images[j], self.labels[j]
            top = int(rng.integers(0, img.shape[1] - ch + 1))
            left = int(rng.integers(0, img.shape[2] - cw + 1))
            xs.append(img[:, top:top + ch, left:left + cw])
            ys.append(lab[top:top + ch, left:left + cw])
        return torch.stack(xs).float().div_(255.0), torch.stack(ys).long()
