"""Real images for calibration, parity and accuracy checks, read from a dataset spec."""

from __future__ import annotations

import numpy as np

from ..data.datasets import Sample, open_dataset
from ..data.images import resize_image, resize_labels
from ..errors import DigaError


def spread_indices(n_total: int, n: int) -> list[int]:
    """`n` indices spread evenly over a dataset of `n_total` (deterministic, covers the whole set)."""
    if n_total == 0:
        return []
    n = min(n, n_total)
    return sorted({int(i) for i in np.linspace(0, n_total - 1, n).round()})


def dataset_images(spec: str, n: int, size: tuple[int, int] | None = None, labelled: bool = False) -> list[Sample]:
    """`n` samples spread over the dataset at `spec`, images resized to `size` (labels nearest) when given."""
    ds = open_dataset(spec, labelled=labelled)
    idx = spread_indices(len(ds), n)
    if not idx:
        raise DigaError(f"dataset {spec} holds no images")
    out = []
    for i in idx:
        s = ds[i]
        label = s.label
        if size is not None and label is not None and tuple(label.shape) != tuple(size):
            label = resize_labels(label, size)
        out.append(Sample(resize_image(s.image, size), label, s.name))
    return out
