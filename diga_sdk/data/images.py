"""Image helpers every part shares (one behaviour each): colour a label map, blend it over the image,
resize an image (bilinear) or a label map (nearest)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .labels import IGNORE_INDEX, PALETTE


def _palette_lut(palette: Sequence[Sequence[int]] | np.ndarray | None) -> np.ndarray:
    """A (256,3) uint8 lookup table: the palette's colours, black for the ignore label and unknown IDs."""
    lut = np.zeros((256, 3), np.uint8)
    pal = np.asarray(PALETTE if palette is None else palette, np.uint8).reshape(-1, 3)[:IGNORE_INDEX]
    lut[: len(pal)] = pal
    return lut


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]] | np.ndarray | None = None) -> np.ndarray:
    """(H,W) train IDs -> (H,W,3) uint8 colours (Cityscapes palette by default); ignore / unknown IDs are black."""
    return _palette_lut(palette)[np.asarray(labels, dtype=np.uint8)]


def overlay(image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]] | np.ndarray | None = None,
            alpha: float = 0.5) -> np.ndarray:
    """The class colours blended over the image (rounded); ignore-label pixels keep the image's colour."""
    labels = np.asarray(labels, dtype=np.uint8)
    colour = _palette_lut(palette)[labels].astype(np.float32)
    weight = np.where(labels[..., None] == IGNORE_INDEX, 0.0, alpha).astype(np.float32)
    out = image.astype(np.float32) * (1.0 - weight) + colour * weight
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_image(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """(H,W,3) uint8 -> (size[0], size[1], 3) uint8, bilinear (antialiased when shrinking); unchanged if None or equal."""
    from PIL import Image

    if size is None or tuple(image.shape[:2]) == tuple(size):
        return image
    h, w = size
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)


def resize_labels(labels: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """(h,w) uint8 label map -> (size[0], size[1]) nearest-neighbour (labels are never blended); unchanged if equal."""
    from PIL import Image

    if size is None or tuple(labels.shape) == tuple(size):
        return labels
    h, w = size
    return np.asarray(Image.fromarray(labels).resize((w, h), Image.Resampling.NEAREST), dtype=np.uint8)
