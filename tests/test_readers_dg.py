"""The domain-generalisation readers on hand-made fixtures in the real download layouts: BDD100K (current
10K layout and the older seg/ zip) and Mapillary Vistas (v1.2 and the v2.0 download's v1.2 folder),
with the Mapillary v1.2 -> Cityscapes table checked class by class."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diga_sdk.data.bdd100k import BDD100KDataset
from diga_sdk.data.datasets import open_dataset
from diga_sdk.data.labels import CLASS_NAMES, MAPILLARY_V12_TO_CITYSCAPES, to_train_ids
from diga_sdk.data.mapillary import MapillaryDataset
from diga_sdk.errors import DigaError

BDD_NAMES = ("7d06fefd-f7be05a6", "7d128593-0ccfea4c", "7d15b18b-1e0d6e3f")
VISTAS_KEYS = ("__CRyFzoDOXn6unQ6a3DnQ", "-0Lw6qpT2CpBH6JGfEYRIg", "_1Gn_xkw7sa_i9GU4mkxxQ")

# Written out by hand from the Vistas v1.2 config.json class list and the Cityscapes train IDs
# (road 0, sidewalk 1, building 2, wall 3, fence 4, pole 5, traffic light 6, traffic sign 7,
# vegetation 8, terrain 9, sky 10, person 11, rider 12, car 13, truck 14, bus 15, train 16,
# motorcycle 17, bicycle 18); every other v1.2 ID is ignored (255).
EXPECTED_VISTAS_TRAIN_IDS = {
    2: 1,    # construction--barrier--curb -> sidewalk
    3: 4,    # construction--barrier--fence -> fence
    6: 3,    # construction--barrier--wall -> wall
    13: 0,   # construction--flat--road -> road
    15: 1,   # construction--flat--sidewalk -> sidewalk
    17: 2,   # construction--structure--building -> building
    19: 11,  # human--person -> person
    20: 12,  # human--rider--bicyclist -> rider
    21: 12,  # human--rider--motorcyclist -> rider
    22: 12,  # human--rider--other-rider -> rider
    24: 0,   # marking--general -> road
    27: 10,  # nature--sky -> sky
    29: 9,   # nature--terrain -> terrain
    30: 8,   # nature--vegetation -> vegetation
    41: 0,   # object--manhole -> road
    45: 5,   # object--support--pole -> pole
    47: 5,   # object--support--utility-pole -> pole
    48: 6,   # object--traffic-light -> traffic light
    50: 7,   # object--traffic-sign--front -> traffic sign
    52: 18,  # object--vehicle--bicycle -> bicycle
    54: 15,  # object--vehicle--bus -> bus
    55: 13,  # object--vehicle--car -> car
    57: 17,  # object--vehicle--motorcycle -> motorcycle
    58: 16,  # object--vehicle--on-rails -> train
    61: 14,  # object--vehicle--truck -> truck
}


def _jpg(path: Path, h: int = 6, w: int = 11, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path, quality=95)


def _mask(path: Path, arr: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    im = Image.frombytes("P" if palette else "L", (arr.shape[1], arr.shape[0]), arr.tobytes())
    if palette:  # Vistas labels are palette PNGs whose index is the class ID
        im.putpalette([(i * 37) % 256 for i in range(768)])
    im.save(path)


def _bdd_label(i: int) -> np.ndarray:
    arr = np.full((6, 11), 255, np.uint8)
    arr[:, : 3 + i] = np.arange(3 + i, dtype=np.uint8) % 19
    return arr


def _write_bdd_current(root: Path, split: str) -> None:
    for i, name in enumerate(BDD_NAMES):
        _jpg(root / "images" / "10k" / split / f"{name}.jpg")
        _mask(root / "labels" / "sem_seg" / "masks" / split / f"{name}.png", _bdd_label(i))


def _write_bdd_older(root: Path, split: str) -> None:
    for i, name in enumerate(BDD_NAMES):
        _jpg(root / "seg" / "images" / split / f"{name}.jpg")
        _mask(root / "seg" / "labels" / split / f"{name}_train_id.png", _bdd_label(i))
        _mask(root / "seg" / "color_labels" / split / f"{name}_train_color.png", np.zeros((6, 11)))


@pytest.mark.parametrize("writer", [_write_bdd_current, _write_bdd_older])
def test_bdd100k_layouts_hold_train_ids(tmp_path: Path, writer) -> None:
    root = tmp_path / "bdd100k"
    writer(root, "val")
    data = open_dataset(f"bdd100k:{root}@val")
    assert len(data) == 3 and data.has_labels
    for i, name in enumerate(sorted(BDD_NAMES)):
        s = data[i]
        assert s.name == name and s.image.shape == (6, 11, 3)
        np.testing.assert_array_equal(s.label, _bdd_label(BDD_NAMES.index(name)))  # train IDs unchanged
    assert not open_dataset(f"bdd100k:{root}@val", labelled=False).has_labels


def test_bdd100k_errors_name_the_problem(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "bdd100k"
    with pytest.raises(DigaError, match="does not exist"):
        open_dataset(f"bdd100k:{root}@val")
    root.mkdir()
    with pytest.raises(DigaError, match="neither images/10k"):
        open_dataset(f"bdd100k:{root}@val")
    _write_bdd_current(root, "val")
    with pytest.raises(DigaError, match="bad BDD100K split 'valid'"):
        BDD100KDataset(root, "valid")
    with pytest.raises(DigaError, match="bdd100k@valid does not exist"):  # not a split name: part of the path
        open_dataset(f"bdd100k:{root}@valid")
    with pytest.raises(DigaError, match="BDD100K train images folder"):
        open_dataset(f"bdd100k:{root}@train")
    (root / "labels" / "sem_seg" / "masks" / "val" / f"{BDD_NAMES[1]}.png").unlink()
    with pytest.raises(DigaError, match=f"1 of 3 images have no label.*{BDD_NAMES[1]}.jpg.*drop --strict"):
        open_dataset(f"bdd100k:{root}@val", strict=True)
    with caplog.at_level(logging.WARNING, logger="diga"):  # as the other readers: skipped, counted once
        assert len(open_dataset(f"bdd100k:{root}@val")) == 2
    assert [r.getMessage() for r in caplog.records if "have no label" in r.getMessage()] == [
        f"{root}: 1 of 3 images have no label in {root}/labels/sem_seg/masks/val and are skipped ({BDD_NAMES[1]}.jpg)"]


def _vistas_label(i: int) -> np.ndarray:
    """Every v1.2 class ID 0..65 once (the last rows), rotated per image."""
    ids = np.roll(np.arange(66), 7 * i)
    return ids.reshape(6, 11)


def _write_vistas(root: Path, split: str, labels_dir: str) -> None:
    for i, key in enumerate(VISTAS_KEYS):
        _jpg(root / split / "images" / f"{key}.jpg")
        _mask(root / split / labels_dir / f"{key}.png", _vistas_label(i), palette=True)
        _mask(root / split / "instances" / f"{key}.png", np.zeros((6, 11)))


@pytest.mark.parametrize("labels_dir", ["labels", "v1.2/labels"])
def test_mapillary_layouts_map_every_v12_class(tmp_path: Path, labels_dir: str) -> None:
    root = tmp_path / "mapillary-vistas"
    _write_vistas(root, "validation", labels_dir)
    if labels_dir.startswith("v1.2"):  # the v2.0 download also ships 124-class labels beside them
        _mask(root / "validation" / "v2.0" / "labels" / f"{VISTAS_KEYS[0]}.png", np.full((6, 11), 123))
    for spec in (f"mapillary:{root}@validation", f"mapillary:{root}@val"):
        data = open_dataset(spec)
        assert len(data) == 3 and data.has_labels
    raw = Image.open(root / "validation" / labels_dir / f"{VISTAS_KEYS[0]}.png")
    assert raw.mode == "P"
    for i in range(3):
        s = data[i]
        ids = _vistas_label(VISTAS_KEYS.index(s.name))
        for vid in range(66):
            got = set(np.unique(s.label[ids == vid]).tolist())
            assert got == {EXPECTED_VISTAS_TRAIN_IDS.get(vid, 255)}, (vid, MAPILLARY_V12_TO_CITYSCAPES[vid][0])


def test_mapillary_table_is_the_v12_class_list() -> None:
    names = [n for n, _ in MAPILLARY_V12_TO_CITYSCAPES]
    assert len(names) == 66 and len(set(names)) == 66
    assert names[13] == "construction--flat--road" and names[55] == "object--vehicle--car"
    assert names[65] == "void--unlabeled"
    mapped = {vid: CLASS_NAMES.index(c) for vid, (_, c) in enumerate(MAPILLARY_V12_TO_CITYSCAPES) if c}
    assert mapped == EXPECTED_VISTAS_TRAIN_IDS
    lut = to_train_ids(np.arange(66), "mapillary")
    assert sorted(set(lut.tolist()) - {255}) == list(range(19))  # every Cityscapes class is reachable


def test_mapillary_errors_name_the_problem(tmp_path: Path) -> None:
    root = tmp_path / "vistas"
    _write_vistas(root, "training", "labels")
    with pytest.raises(DigaError, match="Mapillary validation folder"):
        open_dataset(f"mapillary:{root}@val")
    with pytest.raises(DigaError, match="bad Mapillary split 'dev'"):
        MapillaryDataset(root, "dev")
    with pytest.raises(DigaError, match="@dev does not exist"):  # not a split name: part of the path
        open_dataset(f"mapillary:{root}@dev")
    (root / "training" / "labels" / f"{VISTAS_KEYS[2]}.png").unlink()
    with pytest.raises(DigaError, match=f"no label.*{VISTAS_KEYS[2]}.jpg"):
        open_dataset(f"mapillary:{root}@train", strict=True)
    assert len(open_dataset(f"mapillary:{root}@train")) == len(VISTAS_KEYS) - 1
    v20 = tmp_path / "vistas2"
    _jpg(v20 / "validation" / "images" / f"{VISTAS_KEYS[0]}.jpg")
    _mask(v20 / "validation" / "v2.0" / "labels" / f"{VISTAS_KEYS[0]}.png", np.zeros((6, 11)))
    with pytest.raises(DigaError, match="only v2.0 labels"):
        open_dataset(f"mapillary:{v20}@val")
