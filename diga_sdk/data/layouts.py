"""Write datasets in the real download layouts (GTA5, Cityscapes, SYNTHIA-RAND-CITYSCAPES) with the
file names, folder names, label encodings and sizes they ship with.

What for: the real-data path (readers, loader workers, memory, skipped files) must be exercised at
real sizes without the downloads, which no machine here can fetch. Images are a blocky street layout
with per-class colours plus Gaussian sensor noise, so a PNG costs about what a photo costs to decode;
labels hold each dataset's own IDs (Cityscapes label IDs for GTA5 and Cityscapes, 16-bit SYNTHIA IDs).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from .labels import LABELS, SYNTHIA_ID_TO_NAME

GTA5_SIZE = (1052, 1914)  # (H, W) of a GTA5 frame
CITYSCAPES_SIZE = (1024, 2048)
SYNTHIA_SIZE = (760, 1280)
# the GTA5 frames whose label file the real download lacks (24,966 images, 24,941 labels)
GTA5_MISSING_LABELS = (*range(2154, 2159), *range(4634, 4638), *range(7115, 7120), *range(9683, 9689),
                       *range(12050, 12055))

_NAME_TO_LABEL_ID = {lab.name: lab.id for lab in LABELS if lab.id >= 0}
_SCENE = ("sky", "building", "vegetation", "road", "sidewalk", "car", "person", "pole", "traffic sign")
_SYNTHIA_ID = {name: sid for sid, name in SYNTHIA_ID_TO_NAME.items()}


def _scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(H,W) class indices into _SCENE and (H,W,3) uint8 image: bands, boxes, per-class colour, noise."""
    h, w = size
    rows = np.arange(h)[:, None]
    horizon = int(h * rng.uniform(0.35, 0.5))
    road = int(h * rng.uniform(0.62, 0.75))
    cls = np.where(rows < horizon, 0, np.where(rows < road, 1, 3)).repeat(w, axis=1).astype(np.uint8)
    for k, lo, hi in ((2, horizon // 2, road), (4, road, h), (5, road - h // 8, h - h // 10), (6, horizon, road),
                      (7, horizon // 3, road), (8, horizon // 2, horizon + h // 10)):
        for _ in range(int(rng.integers(1, 4))):
            bw = int(w * rng.uniform(0.03, 0.2))
            bh = max(1, int((hi - lo) * rng.uniform(0.2, 0.8)))
            x0 = int(rng.integers(0, max(1, w - bw)))
            y0 = int(rng.integers(lo, max(lo + 1, hi - bh)))
            cls[y0:y0 + bh, x0:x0 + bw] = k
    palette = rng.integers(30, 225, size=(len(_SCENE), 3)).astype(np.float32)
    img = palette[cls] + rng.normal(0.0, 18.0, size=(h, w, 3)).astype(np.float32)
    return cls, np.clip(img, 0, 255).astype(np.uint8)


def _save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, compress_level=1)


def write_gta5(root: str | Path, count: int, size: tuple[int, int] = GTA5_SIZE, seed: int = 0, first_id: int = 1,
               without_label: Iterable[int] = ()) -> Path:
    """`root/images/NNNNN.png` + `root/labels/NNNNN.png` (Cityscapes label IDs), ids first_id...;
    the ids in `without_label` get no label file, as in the real download."""
    root = Path(root)
    skip = set(without_label)
    lut = np.array([_NAME_TO_LABEL_ID[n] for n in _SCENE], dtype=np.uint8)
    for k in range(count):
        i = first_id + k
        cls, img = _scene(np.random.default_rng([seed, i]), size)
        _save_png(root / "images" / f"{i:05d}.png", img)
        if i not in skip:
            _save_png(root / "labels" / f"{i:05d}.png", lut[cls])
    return root


def write_cityscapes(root: str | Path, split: str, count: int, size: tuple[int, int] = CITYSCAPES_SIZE,
                     seed: int = 0, cities: tuple[str, ...] = ("aachen", "bochum")) -> Path:
    """`leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png` and, beside each, gtFine's
    `_labelIds.png`, `_color.png`, `_instanceIds.png` and `_polygons.json` as the download holds them."""
    root = Path(root)
    lut = np.array([_NAME_TO_LABEL_ID[n] for n in _SCENE], dtype=np.uint8)
    colours = np.array([next(lab.color for lab in LABELS if lab.name == n) for n in _SCENE], dtype=np.uint8)
    for k in range(count):
        city = cities[k % len(cities)]
        stem = f"{city}_{k // len(cities):06d}_{19 + k:06d}"
        cls, img = _scene(np.random.default_rng([seed, 7, k]), size)
        _save_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", img)
        gt = root / "gtFine" / split / city
        _save_png(gt / f"{stem}_gtFine_labelIds.png", lut[cls])
        _save_png(gt / f"{stem}_gtFine_color.png", colours[cls])
        Image.fromarray(lut[cls].astype(np.uint16) * 1000).save(gt / f"{stem}_gtFine_instanceIds.png")
        (gt / f"{stem}_gtFine_polygons.json").write_text(
            json.dumps({"imgHeight": size[0], "imgWidth": size[1], "objects": []}))
    return root


def write_synthia(root: str | Path, count: int, size: tuple[int, int] = SYNTHIA_SIZE, seed: int = 0) -> Path:
    """`RGB/NNNNNNN.png` + `GT/LABELS/NNNNNNN.png`: 16-bit RGBA PNGs whose first channel is the class ID."""
    import png  # pypng: writes the 16-bit multi-channel PNGs SYNTHIA ships

    root = Path(root)
    lut = np.array([_SYNTHIA_ID[n] for n in _SCENE], dtype=np.uint16)
    for k in range(count):
        cls, img = _scene(np.random.default_rng([seed, 11, k]), size)
        _save_png(root / "RGB" / f"{k:07d}.png", img)
        lab = np.zeros((*size, 4), dtype=np.uint16)
        lab[..., 0] = lut[cls]
        out = root / "GT" / "LABELS" / f"{k:07d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as f:
            png.Writer(size[1], size[0], bitdepth=16, greyscale=False, alpha=True).write(
                f, lab.reshape(size[0], size[1] * 4))
    return root
