"""Dataset readers, one per on-disk format, and the `name:PATH[@split]` spec that selects them.

Every reader yields `Sample(image, label, name)`: image (H,W,3) uint8 RGB, label (H,W) uint8 train
IDs (255 = ignore) or None for unlabelled data. Files are read lazily; layouts are checked up front
so a wrong path fails at once with the path named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DigaError
from .labels import to_train_ids

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DATASET_KINDS = ("synthetic", "gta5", "cityscapes", "synthia", "folder", "bdd100k", "mapillary", "split")


@dataclass
class Sample:
    image: np.ndarray
    label: np.ndarray | None
    name: str


def read_image(path: Path) -> np.ndarray:
    """Read an image file as (H,W,3) uint8 RGB; grayscale, palette and RGBA are converted."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.array(im, dtype=np.uint8)
    except FileNotFoundError:
        raise DigaError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DigaError(f"cannot read image {path}: {exc}; replace or remove the file") from None


def read_label_ids(path: Path) -> np.ndarray:
    """Read a label PNG holding class IDs (modes L, P, I;16, I, or 16-bit multi-channel SYNTHIA)."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("L", "P", "I;16", "I;16B", "I;16L", "I"):
                return np.asarray(im).astype(np.int64 if mode.startswith("I") else np.uint8)
    except FileNotFoundError:
        raise DigaError(f"label {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DigaError(f"cannot read label {path}: {exc}; replace or remove the file") from None
    if mode in ("RGB", "RGBA") and path.suffix.lower() == ".png":
        arr = _read_png_16bit_channels(path)
        if arr is not None:
            return arr[..., 0].astype(np.int64)
    raise DigaError(f"label {path} has image mode {mode}; label files must hold class IDs "
                    "(8-bit grayscale/palette or 16-bit PNG), not colour images")


def _read_png_16bit_channels(path: Path) -> np.ndarray | None:
    """Decode a 16-bit multi-channel PNG (SYNTHIA's label format) with pypng; None if 8-bit."""
    import png  # pypng: Pillow reduces 16-bit RGB to 8 bits and would lose the class IDs

    reader = png.Reader(filename=str(path))
    width, height, rows, info = reader.read()
    if info["bitdepth"] != 16:
        return None
    planes = info["planes"]
    return np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(height, width, planes)


class SegDataset:
    """A list of (image path, label path or None) pairs, read on access."""

    dataset = "cityscapes"  # which label-ID table its labels use

    def __init__(self, pairs: list[tuple[Path, Path | None]], root: Path) -> None:
        if not pairs:
            raise DigaError(f"no images found under {root}; check the path and the dataset layout")
        self.pairs = pairs
        self.root = root

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def has_labels(self) -> bool:
        return self.pairs[0][1] is not None

    def __getitem__(self, i: int) -> Sample:
        img_path, lab_path = self.pairs[i]
        image = read_image(img_path)
        label = None
        if lab_path is not None:
            label = to_train_ids(read_label_ids(lab_path), self.dataset)
            if label.shape != image.shape[:2]:
                raise DigaError(f"label {lab_path} is {label.shape[1]}x{label.shape[0]} but image {img_path} "
                                f"is {image.shape[1]}x{image.shape[0]}; they must match")
        return Sample(image, label, img_path.stem)


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DigaError(f"{what} folder {path} does not exist; check the dataset path and layout")
    return path


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class GTA5Dataset(SegDataset):
    """GTA5 layout: `images/*.png` and `labels/*.png` (Cityscapes label IDs), matched by file name."""

    dataset = "gta5"

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        images = _images_in(_need_dir(root / "images", "GTA5 images"))
        label_dir = _need_dir(root / "labels", "GTA5 labels")
        labels = {p.stem: p for p in _images_in(label_dir)}
        if len(labels) != len(images):
            raise DigaError(f"{root}: {len(images)} images but {len(labels)} labels; every image in images/ "
                            "needs a label of the same name in labels/")
        missing = [p.name for p in images if p.stem not in labels]
        if missing:
            raise DigaError(f"{root}: no label in labels/ for images {missing[:3]}")
        super().__init__([(p, labels[p.stem]) for p in images], root)


class CityscapesDataset(SegDataset):
    """Cityscapes layout: `leftImg8bit/{split}/{city}/*_leftImg8bit.png` and the matching
    `gtFine/{split}/{city}/*_gtFine_labelIds.png` (labels optional: `labelled=False`)."""

    dataset = "cityscapes"

    def __init__(self, root: str | Path, split: str = "train", labelled: bool = True) -> None:
        root = Path(root)
        img_root = _need_dir(root / "leftImg8bit" / split, f"Cityscapes leftImg8bit/{split}")
        images = sorted(img_root.glob("*/*_leftImg8bit.png"))
        pairs: list[tuple[Path, Path | None]] = []
        if labelled and (root / "gtFine").exists():
            gt_root = _need_dir(root / "gtFine" / split, f"Cityscapes gtFine/{split}")
            n_labels = len(list(gt_root.glob("*/*_gtFine_labelIds.png")))
            if n_labels != len(images):
                raise DigaError(f"{root}: {len(images)} images in leftImg8bit/{split} but {n_labels} "
                                f"*_gtFine_labelIds.png in gtFine/{split}; they must pair up")
            for p in images:
                lab = gt_root / p.parent.name / p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
                if not lab.is_file():
                    raise DigaError(f"label {lab} for image {p} is missing")
                pairs.append((p, lab))
        else:
            pairs = [(p, None) for p in images]
        super().__init__(pairs, root)


class SynthiaDataset(SegDataset):
    """SYNTHIA-RAND-CITYSCAPES layout: `RGB/*.png` and `GT/LABELS/*.png` (16-bit class IDs)."""

    dataset = "synthia"

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        images = _images_in(_need_dir(root / "RGB", "SYNTHIA RGB"))
        label_dir = _need_dir(root / "GT" / "LABELS", "SYNTHIA GT/LABELS")
        labels = {p.stem: p for p in _images_in(label_dir)}
        if len(labels) != len(images):
            raise DigaError(f"{root}: {len(images)} images in RGB/ but {len(labels)} labels in GT/LABELS/")
        missing = [p.name for p in images if p.stem not in labels]
        if missing:
            raise DigaError(f"{root}: no label in GT/LABELS/ for images {missing[:3]}")
        super().__init__([(p, labels[p.stem]) for p in images], root)


class FolderDataset(SegDataset):
    """A plain folder of images (recursively, sorted): an unlabelled target stream."""

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        _need_dir(root, "image")
        images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        super().__init__([(p, None) for p in images], root)


def open_dataset(spec: str, labelled: bool = True) -> SegDataset:
    """Open a dataset by spec: `synthetic[:source|target][@train|val]`, `gta5:PATH`,
    `cityscapes:PATH[@split]`, `synthia:PATH`, `folder:PATH`, `bdd100k:PATH[@split]`,
    `mapillary:PATH[@split]`, `split:RUN/split.txt@labelled|unlabelled`."""
    kind, _, rest = spec.partition(":")
    path, _, split = rest.partition("@")
    if kind == "synthetic":
        from .synthetic import default_benchmark_dir, generate_benchmark

        domain = path or "source"
        split = split or "train"
        if domain not in ("source", "target") or split not in ("train", "val"):
            raise DigaError(f"bad dataset spec {spec!r}; use synthetic:source@train, synthetic:target@val, ...")
        root = generate_benchmark(default_benchmark_dir())
        if domain == "source":
            return GTA5Dataset(root / "source" / split)
        return CityscapesDataset(root / "target", split, labelled=labelled)
    if kind not in DATASET_KINDS or not path:
        raise DigaError(f"bad dataset spec {spec!r}; use one of synthetic, gta5:PATH, "
                        "cityscapes:PATH[@split], synthia:PATH, folder:PATH, bdd100k:PATH[@split], "
                        "mapillary:PATH[@split], split:FILE@labelled")
    if kind == "gta5":
        return GTA5Dataset(path)
    if kind == "cityscapes":
        return CityscapesDataset(path, split or "train", labelled=labelled)
    if kind == "synthia":
        return SynthiaDataset(path)
    if kind == "bdd100k":
        from .bdd100k import BDD100KDataset

        return BDD100KDataset(path, split or "train", labelled=labelled)
    if kind == "mapillary":
        from .mapillary import MapillaryDataset

        return MapillaryDataset(path, split or "training", labelled=labelled)
    if kind == "split":
        from .split import open_split

        return open_split(path, split, labelled=labelled)
    return FolderDataset(path)
