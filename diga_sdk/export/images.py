"""Real images for calibration, parity and accuracy checks, read from a dataset spec."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..data.datasets import Sample, open_dataset
from ..errors import DigaError


def spread_indices(n_total: int, n: int) -> list[int]:
    """`n` indices spread evenly over a dataset of `n_total` (deterministic, covers the whole set)."""
    if n_total == 0:
        return []
    n = min(n, n_total)
    return sorted({int(i) for i in np.linspace(0, n_total - 1, n).round()})


def resize_image(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """(H,W,3) uint8 resized bilinearly to (H,W) = size (unchanged if None or already that size)."""
    if size is None or tuple(image.shape[:2]) == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


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
            label = np.asarray(Image.fromarray(label).resize((size[1], size[0]), Image.NEAREST))
        out.append(Sample(resize_image(s.image, size), label, s.name))
    return out
