"""The source anchor of online adaptation: a small, fixed, seeded subset of the labelled source set
that the vehicle carries, so every online update keeps DiGA's self-training structure (source pixels
with ground truth pasted onto the target frame by ClassMix). Without it, online self-training learns
only from its own pseudo-labels and drifts or stalls; offline DiGA never trains without source CE.

The subset is a pure function of (spec, samples, seed): a resumed adapter reloads the same images, so
nothing of it goes into the state file. Kept as uint8 tensors (a 64-image 256x512 subset is 33 MB).

`holdout` more images, disjoint from the training subset and never used by an update, are the labels the
vehicle really has for judging itself: `SourceCheck` scores the adapted teacher on them one image at a
time and compares with the frozen shipped model's score on the same images (the safety signal
`source_drop`). `scale` resizes every carried image (and label, nearest) so its objects appear at the
size the vehicle's camera shows them (0.5 for a 128x256 stream from 256x512 source images).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data.datasets import open_dataset
from ..errors import DigaError


class SourceAnchor:
    """`SourceAnchor("synthetic:source@train", 64, seed)`; `crops(k, (h, w), rng)` -> images, labels."""

    def __init__(self, spec: str, samples: int, seed: int = 0, holdout: int = 0, scale: float = 1.0) -> None:
        ds = open_dataset(spec)
        if not ds.has_labels:
            raise DigaError(f"source anchor {spec!r} has no labels; give a labelled source split (e.g. gta5:PATH)")
        if samples + holdout > len(ds):
            raise DigaError(f"source anchor {spec!r} has {len(ds)} images, fewer than source_samples + "
                            f"source_holdout = {samples + holdout}; lower either")
        pick = np.random.default_rng(seed).choice(len(ds), size=samples + holdout, replace=False).tolist()
        self.spec = spec
        self.images: list[torch.Tensor] = []  # (3,H,W) uint8
        self.labels: list[torch.Tensor] = []  # (H,W) uint8 train IDs (255 = ignore)
        self.held_images: list[torch.Tensor] = []  # the held-out slice: scored, never trained on
        self.held_labels: list[torch.Tensor] = []
        for part, (imgs, labs) in ((pick[:samples], (self.images, self.labels)),
                                   (pick[samples:], (self.held_images, self.held_labels))):
            for i in sorted(part):
                s = ds[i]
                img = torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1).contiguous()
                lab = torch.from_numpy(s.label.astype(np.uint8))
                if scale != 1.0:
                    img, lab = _rescale(img, lab, scale)
                imgs.append(img)
                labs.append(lab)
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


def _rescale(img: torch.Tensor, lab: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(3,H,W) uint8 image (bilinear, antialiased) and (H,W) label (nearest) resized by `scale`."""
    h, w = max(8, round(img.shape[1] * scale)), max(8, round(img.shape[2] * scale))
    x = F.interpolate(img[None].float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    y = F.interpolate(lab[None, None].float(), size=(h, w), mode="nearest")
    return x[0].round().clamp(0, 255).to(torch.uint8), y[0, 0].to(torch.uint8)


class SourceCheck:
    """The held-out source slice as a safety signal: `score(model)` predicts the next held-out image with
    `model` and returns the shipped-minus-adapted mIoU (points) over the slice once every image has a
    score from the current weights' era (None before). The shipped model's confusion per image is
    computed once (`calibrate`): it is frozen."""

    def __init__(self, anchor: SourceAnchor, num_classes: int) -> None:
        self.anchor = anchor
        self.c = num_classes
        n = len(anchor.held_images)
        self.shipped = torch.zeros(n, num_classes, num_classes, dtype=torch.float64)
        self.adapted = torch.zeros(n, num_classes, num_classes, dtype=torch.float64)
        self.scored = torch.zeros(n, dtype=torch.bool)
        self.next = 0

    def __len__(self) -> int:
        return len(self.anchor.held_images)

    def _confusion(self, predict: Callable[[torch.Tensor], torch.Tensor], k: int) -> torch.Tensor:
        x = self.anchor.held_images[k][None].float().div(255.0)
        pred = predict(x)[0].long().reshape(-1)
        lab = self.anchor.held_labels[k].long().reshape(-1)
        ok = lab < self.c
        idx = lab[ok] * self.c + pred[ok]
        return torch.bincount(idx, minlength=self.c * self.c).double().reshape(self.c, self.c)

    def calibrate(self, predict: Callable[[torch.Tensor], torch.Tensor]) -> None:
        for k in range(len(self)):
            self.shipped[k] = self._confusion(predict, k)

    def reset(self) -> None:
        """The weights were replaced (rollback): every image needs a score from the new ones."""
        self.scored.zero_()
        self.adapted.zero_()

    def score(self, predict: Callable[[torch.Tensor], torch.Tensor]) -> float | None:
        k = self.next
        self.adapted[k] = self._confusion(predict, k)
        self.scored[k] = True
        self.next = (k + 1) % len(self)
        if not bool(self.scored.all()):
            return None
        return _miou(self.shipped.sum(0)) - _miou(self.adapted.sum(0))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"srccheck.adapted": self.adapted, "srccheck.scored": self.scored.to(torch.uint8)}

    def load(self, t: dict[str, torch.Tensor], nxt: int) -> None:
        if "srccheck.adapted" in t:
            self.adapted, self.scored, self.next = t["srccheck.adapted"], t["srccheck.scored"].bool(), nxt


def _miou(cm: torch.Tensor) -> float:
    """mIoU (points) over the classes present in the labels of confusion matrix `cm` (rows = truth)."""
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    present = cm.sum(1) > 0
    return float((tp[present] / union[present].clamp_min(1)).mean() * 100) if bool(present.any()) else 0.0
