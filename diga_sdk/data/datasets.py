"""Dataset readers, one per on-disk format, and the `name:PATH[@split]` spec that selects them.

Every reader yields `Sample(image, label, name)`: image (H,W,3) uint8 RGB, label (H,W) uint8 train
IDs (255 = ignore) or None for unlabelled data. Files are read lazily; layouts are checked up front
so a wrong path fails at once with the path named.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DigaError
from .labels import to_train_ids

log = logging.getLogger("diga")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DATASET_KINDS = ("synthetic", "gta5", "cityscapes", "synthia", "folder", "bdd100k", "mapillary", "split")


@dataclass
class Sample:
    image: np.ndarray
    label: np.ndarray | None
    name: str
    label_resized: bool = False  # the label file's size differed from the image's: resized nearest-neighbour


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
        self.resized_labels = 0  # labels resized to their image in this process (a count, not a list)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def has_labels(self) -> bool:
        return self.pairs[0][1] is not None

    def __getitem__(self, i: int) -> Sample:
        img_path, lab_path = self.pairs[i]
        image = read_image(img_path)
        label = None
        resized = False
        if lab_path is not None:
            label = to_train_ids(read_label_ids(lab_path), self.dataset)
            if label.shape != image.shape[:2]:
                if self.resized_labels == 0:
                    log.warning("label %s is %dx%d but its image is %dx%d: resized nearest-neighbour (further "
                                "mismatches are counted, not logged)", lab_path, label.shape[1], label.shape[0],
                                image.shape[1], image.shape[0])
                self.resized_labels += 1
                label = resize_label(label, image.shape[:2])
                resized = True
        return Sample(image, label, img_path.stem, resized)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h,w) uint8 train IDs -> (H,W) by nearest-neighbour sampling (classes are never blended)."""
    with Image.fromarray(label) as im:
        return np.asarray(im.resize((size[1], size[0]), Image.NEAREST), dtype=np.uint8)


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DigaError(f"{what} folder {path} does not exist; check the dataset path and layout")
    return path


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def pair_by_stem(images: list[Path], labels: dict[str, Path], root: Path, label_dir: str, strict: bool
                 ) -> list[tuple[Path, Path | None]]:
    """Pair each image with the label of the same stem. Images without a label are skipped with one
    warning that counts them (the real GTA5 download lacks 25 label files); `strict` refuses instead."""
    missing = [p for p in images if p.stem not in labels]
    if missing:
        names = ", ".join(p.name for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
        if strict:
            raise DigaError(f"{root}: {len(missing)} of {len(images)} images have no label in {label_dir} "
                            f"({names}); add the labels or drop --strict to skip those images")
        log.warning("%s: %d of %d images have no label in %s and are skipped (%s)", root, len(missing),
                    len(images), label_dir, names)
    return [(p, labels[p.stem]) for p in images if p.stem in labels]


class GTA5Dataset(SegDataset):
    """GTA5 layout: `images/*.png` and `labels/*.png` (Cityscapes label IDs), matched by file name."""

    dataset = "gta5"

    def __init__(self, root: str | Path, strict: bool = False) -> None:
        root = Path(root)
        images = _images_in(_need_dir(root / "images", "GTA5 images"))
        labels = {p.stem: p for p in _images_in(_need_dir(root / "labels", "GTA5 labels"))}
        super().__init__(pair_by_stem(images, labels, root, "labels/", strict), root)


class CityscapesDataset(SegDataset):
    """Cityscapes layout: `leftImg8bit/{split}/{city}/*_leftImg8bit.png` and the matching
    `gtFine/{split}/{city}/*_gtFine_labelIds.png` (labels optional: `labelled=False`)."""

    dataset = "cityscapes"

    def __init__(self, root: str | Path, split: str = "train", labelled: bool = True, strict: bool = False) -> None:
        root = Path(root)
        img_root = _need_dir(root / "leftImg8bit" / split, f"Cityscapes leftImg8bit/{split}")
        images = sorted(img_root.glob("*/*_leftImg8bit.png"))
        if labelled and (root / "gtFine").exists():
            gt_root = _need_dir(root / "gtFine" / split, f"Cityscapes gtFine/{split}")
            suffix = "_gtFine_labelIds.png"
            labels = {p.name[:-len(suffix)] + "_leftImg8bit": p for p in gt_root.glob(f"*/*{suffix}")}
            pairs = pair_by_stem(images, labels, root, f"gtFine/{split}", strict)
        else:
            pairs = [(p, None) for p in images]
        super().__init__(pairs, root)


class SynthiaDataset(SegDataset):
    """SYNTHIA-RAND-CITYSCAPES layout: `RGB/*.png` and `GT/LABELS/*.png` (16-bit class IDs)."""

    dataset = "synthia"

    def __init__(self, root: str | Path, strict: bool = False) -> None:
        root = Path(root)
        images = _images_in(_need_dir(root / "RGB", "SYNTHIA RGB"))
        labels = {p.stem: p for p in _images_in(_need_dir(root / "GT" / "LABELS", "SYNTHIA GT/LABELS"))}
        super().__init__(pair_by_stem(images, labels, root, "GT/LABELS/", strict), root)


class FolderDataset(SegDataset):
    """A plain folder of images (recursively, sorted): an unlabelled target stream."""

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        _need_dir(root, "image")
        images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        super().__init__([(p, None) for p in images], root)


# the split names a trailing `@name` may take (Cityscapes/BDD100K, Mapillary, a semi-supervised split file)
SPLIT_NAMES = ("train", "val", "test", "training", "validation", "labelled", "unlabelled")


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed `kind:PATH[@split]` spec; `split` is "" when none was given."""

    kind: str
    path: str
    split: str


def parse_dataset_spec(spec: str) -> DatasetSpec:
    """`kind:PATH[@split]` read from the right: only a trailing `@name` with a known split name (SPLIT_NAMES)
    is a split, so a PATH may itself hold '@' or ':' (`gta5:/data/at@dir/x` is the folder `/data/at@dir/x`)."""
    kind, colon, rest = spec.partition(":")
    if not colon:  # `synthetic` or `synthetic@val`
        kind, rest = spec, ""
        head, at, tail = kind.rpartition("@")
        if at and tail in SPLIT_NAMES:
            return DatasetSpec(head, "", tail)
        return DatasetSpec(kind, "", "")
    head, at, tail = rest.rpartition("@")
    if at and tail in SPLIT_NAMES:
        return DatasetSpec(kind, head, tail)
    return DatasetSpec(kind, rest, "")


def open_dataset(spec: str, labelled: bool = True, strict: bool = False) -> SegDataset:
    """Open a dataset by spec: `synthetic[:source|target][@train|val]`, `gta5:PATH`,
    `cityscapes:PATH[@split]`, `synthia:PATH`, `folder:PATH`, `bdd100k:PATH[@split]`,
    `mapillary:PATH[@split]`, `split:RUN/split.txt@labelled|unlabelled`. `strict` refuses images
    without labels."""
    parsed = parse_dataset_spec(spec)
    kind, path, split = parsed.kind, parsed.path, parsed.split
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
        return GTA5Dataset(path, strict=strict)
    if kind == "cityscapes":
        return CityscapesDataset(path, split or "train", labelled=labelled, strict=strict)
    if kind == "synthia":
        return SynthiaDataset(path, strict=strict)
    if kind == "bdd100k":
        from .bdd100k import BDD100KDataset

        return BDD100KDataset(path, split or "train", labelled=labelled, strict=strict)
    if kind == "mapillary":
        from .mapillary import MapillaryDataset

        return MapillaryDataset(path, split or "training", labelled=labelled, strict=strict)
    if kind == "split":
        from .split import open_split

        return open_split(path, split, labelled=labelled)
    return FolderDataset(path)
