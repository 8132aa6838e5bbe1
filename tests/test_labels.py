"""Label-ID -> train-ID mappings against the official Cityscapes definitions (cityscapesscripts)."""

from __future__ import annotations

import numpy as np
import pytest

from diga_sdk.data.images import colorize
from diga_sdk.data.labels import CLASS_NAMES, PALETTE, SUBSETS, SYNTHIA_ID_TO_NAME, to_train_ids
from diga_sdk.errors import DigaError

official = pytest.importorskip("cityscapesscripts.helpers.labels", reason="cityscapesscripts is in the dev extra")


def _official_train_id(label_id: int) -> int:
    lab = official.id2label.get(label_id)
    if lab is None or lab.trainId in (-1, 255):
        return 255
    return lab.trainId


@pytest.mark.parametrize("dataset", ["cityscapes", "gta5"])
def test_every_label_id_maps_like_the_official_table(dataset: str) -> None:
    ids = np.arange(256, dtype=np.uint8)
    expected = np.array([_official_train_id(int(i)) for i in ids], dtype=np.uint8)
    np.testing.assert_array_equal(to_train_ids(ids, dataset), expected)


def test_class_names_and_palette_follow_train_ids() -> None:
    by_train = {lab.trainId: lab for lab in official.labels if 0 <= lab.trainId < 255}
    assert list(CLASS_NAMES) == [by_train[t].name for t in range(19)]
    assert PALETTE.tolist() == [list(by_train[t].color) for t in range(19)]


def test_synthia_ids_map_by_class_name() -> None:
    ids = np.arange(0, 30, dtype=np.int64)
    got = to_train_ids(ids, "synthia")
    for sid in range(30):
        name = SYNTHIA_ID_TO_NAME.get(sid)
        want = official.name2label[name].trainId if name else 255
        assert got[sid] == want, (sid, name)
    # SYNTHIA labels are 16-bit: large IDs are valid input and map to ignore.
    assert to_train_ids(np.array([[1000]], dtype=np.int64), "synthia")[0, 0] == 255


def test_subsets() -> None:
    names = lambda ids: {CLASS_NAMES[i] for i in ids}  # noqa: E731
    assert len(SUBSETS[16]) == 16 and names(range(19)) - names(SUBSETS[16]) == {"terrain", "truck", "train"}
    assert names(SUBSETS[16]) - names(SUBSETS[13]) == {"wall", "fence", "pole"}


def test_colorize_and_errors() -> None:
    out = colorize(np.array([[0, 255]], dtype=np.uint8))
    assert out[0, 0].tolist() == [128, 64, 128] and out[0, 1].tolist() == [0, 0, 0]
    with pytest.raises(DigaError, match="unknown dataset"):
        to_train_ids(np.zeros(2, dtype=np.uint8), "kitti")
    with pytest.raises(DigaError, match="integers"):
        to_train_ids(np.zeros(2, dtype=np.float32), "cityscapes")
