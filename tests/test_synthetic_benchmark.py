"""The embedded benchmark: deterministic per seed, real layouts, a realistic class set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diga_sdk.data.labels import to_train_ids
from diga_sdk.data.synthetic import generate_benchmark, render_item
from diga_sdk.errors import DigaError


def test_deterministic_per_seed() -> None:
    a_img, a_lab = render_item("target", "train", 5, seed=1, size=(64, 128))
    b_img, b_lab = render_item("target", "train", 5, seed=1, size=(64, 128))
    c_img, _ = render_item("target", "train", 5, seed=2, size=(64, 128))
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)


def test_class_set_and_domains_differ() -> None:
    seen_src, seen_tgt = set(), set()
    src_means, tgt_means = [], []
    for i in range(12):
        img, lab = render_item("source", "train", i, seed=0)
        seen_src |= set(np.unique(to_train_ids(lab, "gta5")).tolist())
        src_means.append(img.reshape(-1, 3).mean(0))
        img, lab = render_item("target", "train", i, seed=0)
        seen_tgt |= set(np.unique(to_train_ids(lab, "cityscapes")).tolist())
        tgt_means.append(img.reshape(-1, 3).mean(0))
    assert len(seen_src - {255}) >= 12 and len(seen_tgt - {255}) >= 12
    assert 255 in seen_tgt  # the ego-vehicle hood is ignored in the target, as in Cityscapes
    # The target camera is darker on average than the source's uniform light.
    assert np.mean(tgt_means) < np.mean(src_means)


def test_generate_layout_and_idempotence(tiny_benchmark: Path, tmp_path: Path) -> None:
    manifest = json.loads((tiny_benchmark / "manifest.json").read_text())
    assert manifest["counts"]["source/train"] == 12
    assert len(list((tiny_benchmark / "source" / "train" / "images").glob("*.png"))) == 12
    assert len(list((tiny_benchmark / "target" / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))) == 4
    # Same request again: nothing rewritten; another request into the same folder: refused.
    assert generate_benchmark(tiny_benchmark, seed=3, size=tuple(manifest["size"]), counts=manifest["counts"]) == tiny_benchmark
    with pytest.raises(DigaError, match="different benchmark"):
        generate_benchmark(tiny_benchmark, seed=4, size=(64, 128), counts=manifest["counts"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("user data")
    with pytest.raises(DigaError, match="not empty"):
        generate_benchmark(tmp_path / "full", size=(64, 128), counts={"source/train": 1})
    assert (tmp_path / "full" / "keep.txt").read_text() == "user data"
