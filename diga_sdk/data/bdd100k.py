"""BDD100K semantic segmentation (the 10K images), in either of its download layouts.

- current: `images/10k/{split}/NAME.jpg` with `labels/sem_seg/masks/{split}/NAME.png`
- older `bdd100k_seg` zip: `seg/images/{split}/NAME.jpg` with `seg/labels/{split}/NAME_train_id.png`

Both label files hold the 19 Cityscapes train IDs directly (255 = ignore).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DigaError
from .datasets import SegDataset, _images_in, _need_dir, pair_by_stem

BDD_SPLITS = ("train", "val", "test")


def _layout(root: Path, split: str) -> tuple[Path, Path, str]:
    """(image folder, label folder, label suffix) of whichever layout `root` holds."""
    if (root / "images" / "10k").is_dir():
        return root / "images" / "10k" / split, root / "labels" / "sem_seg" / "masks" / split, ".png"
    if (root / "seg" / "images").is_dir():
        return root / "seg" / "images" / split, root / "seg" / "labels" / split, "_train_id.png"
    raise DigaError(f"BDD100K folder {root} holds neither images/10k/ (with labels/sem_seg/masks/) nor "
                    "seg/images/ (with seg/labels/); point bdd100k:PATH at the unpacked bdd100k folder")


class BDD100KDataset(SegDataset):
    """BDD100K 10K images with their semantic masks (train IDs), matched by file name."""

    dataset = "bdd100k"

    def __init__(self, root: str | Path, split: str = "train", labelled: bool = True, strict: bool = False) -> None:
        root = Path(root)
        if split not in BDD_SPLITS:
            raise DigaError(f"bad BDD100K split {split!r}; use one of {', '.join(BDD_SPLITS)}")
        img_dir, lab_dir, suffix = _layout(_need_dir(root, "BDD100K"), split)
        images = [p for p in _images_in(_need_dir(img_dir, f"BDD100K {split} images")) if p.suffix.lower() == ".jpg"]
        pairs: list[tuple[Path, Path | None]] = [(p, None) for p in images]
        if labelled and lab_dir.parent.is_dir() and split != "test":
            _need_dir(lab_dir, f"BDD100K {split} labels")
            labels = {p.name[:-len(suffix)]: p for p in lab_dir.iterdir() if p.name.endswith(suffix)}
            pairs = pair_by_stem(images, labels, root, str(lab_dir), strict)
        super().__init__(pairs, img_dir)
