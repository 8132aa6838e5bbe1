"""The real datasets as downloaded: missing labels, odd label sizes, unreadable files, worker loaders."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diga_sdk.data.datasets import CityscapesDataset, GTA5Dataset, SynthiaDataset, open_dataset
from diga_sdk.data.labels import to_train_ids
from diga_sdk.data.layouts import write_cityscapes, write_gta5, write_synthia
from diga_sdk.data.loader import BatchStream, StepBatches, scale_crop_flip
from diga_sdk.errors import DigaError

SMALL = (60, 100)


def test_gta5_missing_labels_are_skipped_with_one_counted_warning(tmp_path: Path, caplog) -> None:
    root = write_gta5(tmp_path / "gta5", 8, SMALL, first_id=2153, without_label=(2154, 2155, 2156))
    with caplog.at_level(logging.WARNING, logger="diga"):
        ds = GTA5Dataset(root)
    assert len(ds) == 5 and all(lab is not None and lab.stem == img.stem for img, lab in ds.pairs)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "3 of 8 images have no label" in warnings[0] and "02154.png" in warnings[0]
    with pytest.raises(DigaError, match="3 of 8 images have no label.*--strict"):
        open_dataset(f"gta5:{root}", strict=True)


def test_label_of_another_size_is_resized_nearest_and_counted(tmp_path: Path, caplog) -> None:
    root = write_gta5(tmp_path / "gta5", 3, SMALL)
    lab_path = root / "labels" / "00002.png"
    lab = np.asarray(Image.open(lab_path))
    Image.fromarray(lab[::2, ::2]).save(lab_path)  # half size, as some GTA5 labels are off by pixels
    ds = GTA5Dataset(root)
    with caplog.at_level(logging.WARNING, logger="diga"):
        s = ds[1]
        ds[1]
    orig = to_train_ids(lab, "gta5")
    assert s.label_resized and s.label.shape == SMALL and s.image.shape[:2] == SMALL
    assert np.array_equal(s.label[::2, ::2], orig[::2, ::2])  # nearest-neighbour: no blended class IDs
    assert ds.resized_labels == 2 and sum("resized nearest" in r.getMessage() for r in caplog.records) == 1


def test_cityscapes_layout_with_every_gtfine_file(tmp_path: Path) -> None:
    root = write_cityscapes(tmp_path / "cs", "val", 4, SMALL)
    assert len(list((root / "gtFine" / "val" / "aachen").iterdir())) == 8  # labelIds, color, instanceIds, polygons
    ds = CityscapesDataset(root, "val")
    assert len(ds) == 4 and ds.has_labels
    assert all(lab.name.endswith("_gtFine_labelIds.png") for _, lab in ds.pairs)
    s = ds[0]
    assert s.label.dtype == np.uint8 and set(np.unique(s.label)) <= set(range(19)) | {255}
    (ds.pairs[0][1]).unlink()
    assert len(CityscapesDataset(root, "val")) == 3
    with pytest.raises(DigaError, match="1 of 4 images have no label"):
        CityscapesDataset(root, "val", strict=True)


def test_synthia_16bit_labels_read_as_train_ids(tmp_path: Path) -> None:
    root = write_synthia(tmp_path / "synthia", 2, SMALL)
    s = SynthiaDataset(root)[0]
    assert s.label.shape == SMALL and {0, 2, 10} & set(np.unique(s.label))  # road, building, sky present


def _batches(root: Path, **kw) -> StepBatches:
    return StepBatches(GTA5Dataset(root), 2, (32, 48), (0.7, 1.0), seed=5, stream="t", **kw)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("threads", [1, 2])
def test_batches_are_identical_whatever_the_worker_count(tmp_path: Path, threads: int) -> None:
    """Also with a multi-threaded training process whose OpenMP pool already ran: bilinear resizing
    differs in the last bit between thread counts, so every batch is made on one thread, wherever it is
    made (a run with default workers interrupted by Ctrl-C is in test_hardening_cli)."""
    root = write_gta5(tmp_path / "gta5", 6, SMALL)
    sizes = [(40, 70), None]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.ones(512, 512) @ torch.ones(512, 512)  # starts the OpenMP pool, as a training step does
        ref = [_batches(root, sizes=sizes, per_axis=True)[s] for s in range(3, 7)]
        assert torch.get_num_threads() == threads
        for workers in (0, 2):
            got = list(BatchStream(_batches(root, sizes=sizes, per_axis=True), 3, 7, workers))
            assert len(got) == 4
            for a, b in zip(ref, got, strict=True):
                assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.indices == b.indices
    finally:
        torch.set_num_threads(before)


def test_unreadable_image_is_replaced_counted_and_too_many_stop_the_run(tmp_path: Path) -> None:
    root = write_gta5(tmp_path / "gta5", 6, SMALL)
    bad = root / "images" / "00003.png"
    bad.write_bytes(b"\x89PNG truncated")
    batches = _batches(root)
    stream = BatchStream(batches, 0, 6, workers=0)
    got = list(stream)
    assert len(got) == 6 and all(b.images.shape == (2, 3, 32, 48) for b in got)
    assert stream.skipped and all(p.endswith("00003.png") for p in stream.skipped)
    assert all(2 not in b.indices for b in got)  # index 2 (00003.png) never reaches a batch
    # the same files fail the same way: the replacement is deterministic
    again = list(BatchStream(_batches(root), 0, 6, workers=0))
    assert all(torch.equal(a.images, b.images) for a, b in zip(got, again, strict=True))
    # one bad file in six is far over 1 % of the samples of a long run: it stops with a clear error
    with pytest.raises(DigaError, match=r"could not be read \(more than 1%\).*00003.png"):
        list(BatchStream(_batches(root), 0, 60, workers=0))


def test_cache_is_bounded_by_its_byte_budget(tmp_path: Path) -> None:
    root = write_gta5(tmp_path / "gta5", 6, SMALL)
    per_sample = SMALL[0] * SMALL[1] * 4  # image (3 bytes/pixel) + label (1 byte/pixel)
    batches = _batches(root, cache_bytes=3 * per_sample)
    for s in range(6):
        batches[s]
    assert batches._cache.used <= 3 * per_sample and len(batches._cache._items) == 3


def test_batches_cross_as_bytes_and_match_float_resizing(tmp_path: Path) -> None:
    """Workers send uint8 images and labels (a quarter of the float traffic); resizing the bytes stays
    within one grey level of resizing floats, and `on()` makes [0,1] floats and int64 labels."""
    root = write_gta5(tmp_path / "gta5", 2, SMALL)
    b = _batches(root, sizes=[(40, 70), None], per_axis=True)[0]
    assert b.images.dtype == torch.uint8 and b.labels is not None and b.labels.dtype == torch.uint8
    x, y = b.on("cpu")
    assert x.dtype == torch.float32 and torch.equal(x, b.images.float() / 255.0)
    assert y is not None and y.dtype == torch.int64 and torch.equal(y, b.labels.long())
    s = GTA5Dataset(root)[0]
    img = torch.from_numpy(s.image).permute(2, 0, 1)
    lab = torch.from_numpy(s.label)
    for seed in range(4):
        got_i, got_l = scale_crop_flip(img, lab, (32, 48), (0.5, 0.9), np.random.default_rng(seed), per_axis=True)
        ref_i, ref_l = scale_crop_flip(img.float(), lab, (32, 48), (0.5, 0.9), np.random.default_rng(seed),
                                       per_axis=True)
        assert (got_i.float() - ref_i).abs().max() <= 1.0 + 1e-3 and torch.equal(got_l, ref_l)


def test_the_loaders_pinning_pins_a_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA the DataLoader pins each batch with torch's `pin_memory(data)`, which passes unknown types
    through unchanged; a Batch pins its tensors itself (pinning is faked here: this machine has no GPU)."""
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned: list[torch.Tensor] = []

    def fake_pin(t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        pinned.append(out)
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    b = _batches(write_gta5(tmp_path / "gta5", 2, SMALL))[0]
    p = pin_memory(b)
    assert isinstance(p, type(b)) and p.indices == b.indices
    assert p.images is pinned[0] and p.labels is pinned[1] and torch.equal(p.images, b.images)
