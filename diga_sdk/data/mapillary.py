"""Mapillary Vistas, evaluated with its v1.2 labels (66 classes) mapped onto the 19 Cityscapes classes.

The v1.2 download: `{training,validation}/images/KEY.jpg` with `{split}/labels/KEY.png` (8-bit palette
PNGs whose index is the v1.2 class ID); the v2.0 download keeps the same labels in
`{split}/v1.2/labels/KEY.png` beside its 124-class `v2.0/` folder. The mapping is the single table
`labels.MAPILLARY_V12_TO_CITYSCAPES`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DigaError
from .datasets import SegDataset, _images_in, _need_dir, pair_by_stem

SPLIT_NAMES = {"train": "training", "training": "training", "val": "validation", "validation": "validation",
               "test": "testing", "testing": "testing"}


def _label_dir(split_dir: Path) -> Path | None:
    for cand in (split_dir / "labels", split_dir / "v1.2" / "labels"):
        if cand.is_dir():
            return cand
    if (split_dir / "v2.0" / "labels").is_dir():
        raise DigaError(f"{split_dir} holds only v2.0 labels (124 classes); the Cityscapes mapping needs the v1.2 "
                        f"labels in {split_dir / 'v1.2' / 'labels'} (both ship in the v2.0 download)")
    return None


class MapillaryDataset(SegDataset):
    """Mapillary Vistas images with v1.2 labels, matched by file name (the image key)."""

    dataset = "mapillary"

    def __init__(self, root: str | Path, split: str = "training", labelled: bool = True, strict: bool = False) -> None:
        root = Path(root)
        if split not in SPLIT_NAMES:
            raise DigaError(f"bad Mapillary split {split!r}; use training (train), validation (val) or testing")
        split = SPLIT_NAMES[split]
        split_dir = _need_dir(_need_dir(root, "Mapillary Vistas") / split, f"Mapillary {split}")
        images = [p for p in _images_in(_need_dir(split_dir / "images", f"Mapillary {split}/images"))
                  if p.suffix.lower() == ".jpg"]
        pairs: list[tuple[Path, Path | None]] = [(p, None) for p in images]
        lab_dir = _label_dir(split_dir) if labelled and split != "testing" else None
        if lab_dir is not None:
            labels = {p.stem: p for p in lab_dir.glob("*.png")}
            pairs = pair_by_stem(images, labels, root, str(lab_dir), strict)
        super().__init__(pairs, split_dir)
