"""Dataset readers on real on-disk layouts: GTA5, Cityscapes, SYNTHIA (16-bit), a plain folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import png
import pytest
from PIL import Image

from diga_sdk.data.datasets import (
    CityscapesDataset,
    FolderDataset,
    GTA5Dataset,
    SynthiaDataset,
    open_dataset,
    read_image,
)
from diga_sdk.errors import DigaError


def test_gta5_and_cityscapes_layouts(tiny_benchmark: Path) -> None:
    src = GTA5Dataset(tiny_benchmark / "source" / "train")
    tgt = CityscapesDataset(tiny_benchmark / "target", "val")
    assert len(src) == 12 and len(tgt) == 4
    s = src[0]
    assert s.image.shape == (64, 128, 3) and s.image.dtype == np.uint8
    assert s.label.shape == (64, 128) and s.label.dtype == np.uint8
    assert set(np.unique(s.label)) <= set(range(19)) | {255}
    # GTA5 labels are palette PNGs whose indices are Cityscapes label IDs.
    raw = Image.open(src.pairs[0][1])
    assert raw.mode == "P"
    assert (np.asarray(raw) == 7).any()  # road (label ID 7) -> train ID 0
    assert tgt[0].label is not None and tgt.pairs[0][0].name.endswith("_leftImg8bit.png")
    unlabelled = CityscapesDataset(tiny_benchmark / "target", "val", labelled=False)
    assert unlabelled[0].label is None and not unlabelled.has_labels


def test_specs(tiny_specs: dict[str, str], tiny_benchmark: Path) -> None:
    assert len(open_dataset(tiny_specs["target_train"])) == 12
    assert len(open_dataset(f"folder:{tiny_benchmark}/target/leftImg8bit/val")) == 4
    for bad in ("kitti:/x", "gta5", "synthetic:moon@val", "cityscapes:"):
        with pytest.raises(DigaError, match="spec"):
            open_dataset(bad)


def _write_png16(path: Path, arr: np.ndarray) -> None:
    h, w, c = arr.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        png.Writer(w, h, greyscale=False, bitdepth=16, alpha=c == 4).write(f, arr.reshape(h, w * c).tolist())


def test_synthia_16bit_multichannel_labels(tmp_path: Path) -> None:
    root = tmp_path / "synthia"
    (root / "RGB").mkdir(parents=True)
    Image.fromarray(np.full((4, 6, 3), 90, np.uint8)).save(root / "RGB" / "0000001.png")
    lab = np.zeros((4, 6, 3), dtype=np.uint16)
    lab[..., 0] = [[3, 3, 4, 4, 1, 1]] * 4  # road, road, sidewalk, sidewalk, sky, sky
    lab[0, 0, 0] = 22  # lane marking: not a Cityscapes class -> ignore
    lab[..., 1] = 513  # instance channel must not leak into the class
    _write_png16(root / "GT" / "LABELS" / "0000001.png", lab)
    ds = SynthiaDataset(root)
    got = ds[0].label
    assert got[1].tolist() == [0, 0, 1, 1, 10, 10]
    assert got[0, 0] == 255


def test_read_errors_name_the_path(tmp_path: Path, tiny_benchmark: Path) -> None:
    with pytest.raises(DigaError, match="GTA5 images folder .*does not exist"):
        GTA5Dataset(tmp_path / "nowhere")
    root = tmp_path / "gta"
    shutil.copytree(tiny_benchmark / "source" / "val", root)
    next((root / "labels").iterdir()).unlink()
    with pytest.raises(DigaError, match="1 of 4 images have no label in labels/"):
        GTA5Dataset(root, strict=True)
    assert len(GTA5Dataset(root)) == 3  # the real GTA5 download lacks 25 labels: skipped, not fatal
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DigaError, match="broken.png"):
        read_image(bad)
    # A colour label (e.g. gtFine_color by mistake) is refused with the path named.
    root2 = tmp_path / "gta2"
    shutil.copytree(tiny_benchmark / "source" / "val", root2)
    first = sorted((root2 / "labels").iterdir())[0]
    Image.fromarray(np.zeros((64, 128, 3), np.uint8)).save(first)
    with pytest.raises(DigaError, match=f"{first.name}.*mode RGB"):
        GTA5Dataset(root2)[0]
    with pytest.raises(DigaError, match="no images found"):
        (tmp_path / "empty").mkdir()
        FolderDataset(tmp_path / "empty")


def test_folder_converts_modes(tmp_path: Path) -> None:
    Image.fromarray(np.full((5, 7), 128, np.uint8), mode="L").save(tmp_path / "a.png")
    Image.fromarray(np.full((5, 7, 4), 200, np.uint8), mode="RGBA").save(tmp_path / "b.png")
    ds = FolderDataset(tmp_path)
    assert [ds[i].image.shape for i in range(2)] == [(5, 7, 3), (5, 7, 3)]
