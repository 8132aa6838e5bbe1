"""Training batches from worker processes: each batch a pure function of (seed, step).

`StepBatches` is a map-style dataset over training *steps*: item `step` is that step's whole batch
(indices from an epoch permutation, then per slot: optional rescale to the slot's size, random
rescale, crop, flip), drawn from `step_rng(seed, step, ...)` alone. A torch `DataLoader` over the
steps with N workers therefore yields the same batches as one process, in order, so a resumed run
ends bit-identical whatever `--workers` is. Nothing is cached unless a byte budget is given.

An unreadable image or label is skipped (the next index takes its place, deterministically),
logged and counted; `BatchStream` stops the run once more than 1 % of the drawn samples failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DigaError
from .datasets import Sample, SegDataset
from .labels import IGNORE_INDEX
from .transforms import step_rng

log = logging.getLogger("diga")

MAX_SKIP_SHARE = 0.01  # a run that fails to read more than this share of its samples stops
MIN_SAMPLES_FOR_SKIP_RULE = 100
_RETRIES = 16


def default_workers() -> int:
    """The cores this process may use, at most 4 (the authors' loaders used 1-4 workers per stream)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


@dataclass
class Batch:
    """One training step's batch as it crosses from a worker: (B,3,h,w) uint8 images and (B,h,w) uint8
    labels (train IDs, 255 ignore) or None. Bytes, not floats: a quarter of the inter-process traffic
    (an eighth for labels); `on(device)` makes the training tensors where they are used."""

    images: torch.Tensor
    labels: torch.Tensor | None
    indices: list[int]
    skipped: list[str] = field(default_factory=list)  # files that could not be read (replaced)
    resized_labels: int = 0  # labels whose size differed from their image (resized nearest-neighbour)

    def pin_memory(self) -> Batch:
        """The same batch in page-locked memory (the DataLoader's pinning thread calls this on CUDA; without
        it a dataclass passes through unpinned and the non-blocking copy would block)."""
        return Batch(self.images.pin_memory(), None if self.labels is None else self.labels.pin_memory(),
                     self.indices, self.skipped, self.resized_labels)

    def on(self, device: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(float images in [0,1], int64 labels or None) on `device`: copied as bytes (non-blocking from
        the pinned memory the DataLoader made on CUDA), converted there."""
        non_blocking = device.startswith("cuda")
        images = self.images.to(device, non_blocking=non_blocking).float().div_(255.0)
        labels = None if self.labels is None else self.labels.to(device, non_blocking=non_blocking).long()
        return images, labels


class _ByteBudgetCache:
    """Least-recently-used decoded samples, at most `budget` bytes (0: off)."""

    def __init__(self, budget: int) -> None:
        self.budget, self.used = budget, 0
        self._items: OrderedDict[int, Sample] = OrderedDict()

    def get(self, i: int) -> Sample | None:
        s = self._items.get(i)
        if s is not None:
            self._items.move_to_end(i)
        return s

    def put(self, i: int, s: Sample) -> None:
        size = s.image.nbytes + (s.label.nbytes if s.label is not None else 0)
        if self.budget <= 0 or size > self.budget:
            return
        while self.used + size > self.budget:
            _, old = self._items.popitem(last=False)
            self.used -= old.image.nbytes + (old.label.nbytes if old.label is not None else 0)
        self._items[i] = s
        self.used += size


def scale_crop_flip(image: torch.Tensor, label: torch.Tensor | None, crop: tuple[int, int],
                    scale: tuple[float, float], rng: np.random.Generator, resize: tuple[int, int] | None = None,
                    per_axis: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(3,H,W) uint8 image and (H,W) uint8 label -> one training crop: optional rescale to `resize` (H, W),
    a random rescale by a factor in `scale` (one factor, or one per axis), a random crop (padding with 0 /
    ignore where the image is smaller) and a horizontal flip with probability 1/2. Bilinear resizing runs
    on the bytes (as the authors' PIL pipeline does), 6x cheaper than on floats at GTA5's size."""
    h, w = resize if resize is not None else image.shape[-2:]
    sh = float(rng.uniform(*scale))
    sw = float(rng.uniform(*scale)) if per_axis else sh
    nh, nw = max(int(round(h * sh)), 1), max(int(round(w * sw)), 1)
    if (nh, nw) != tuple(image.shape[-2:]):
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        if label is not None:
            label = F.interpolate(label[None, None], size=(nh, nw), mode="nearest")[0, 0]
    ch, cw = crop
    ph, pw = max(ch - nh, 0), max(cw - nw, 0)
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph), value=0.0)
        if label is not None:
            label = F.pad(label, (0, pw, 0, ph), value=IGNORE_INDEX)
    y0 = int(rng.integers(0, image.shape[-2] - ch + 1))
    x0 = int(rng.integers(0, image.shape[-1] - cw + 1))
    image = image[:, y0:y0 + ch, x0:x0 + cw]
    if label is not None:
        label = label[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        image = image.flip(-1)
        label = label.flip(-1) if label is not None else None
    return image.contiguous(), (label.contiguous() if label is not None else None)


class StepBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item `step` is that step's batch (see the module docstring).

    `sizes`, if given, says per batch slot the (H, W) the image is first rescaled to, or None for its
    stored size (the authors' recipe mixes one 720x1280 and two full-size GTA5 images); a batch that is
    a multiple of len(sizes) repeats them (a 4-GPU run: 12 images, each rank the recipe's 3).
    `label_lut` (256 entries) maps the stored train IDs to the model's classes (e.g. 19 -> 16).
    """

    def __init__(self, data: SegDataset, batch_size: int, crop: tuple[int, int], scale: tuple[float, float],
                 seed: int, stream: str = "", sizes: Sequence[tuple[int, int] | None] | None = None,
                 per_axis: bool = False, cache_bytes: int = 0, label_lut: np.ndarray | None = None) -> None:
        if batch_size < 1:
            raise DigaError(f"batch size must be at least 1, got {batch_size}")
        if sizes and batch_size % len(sizes):
            raise DigaError(f"a batch of {batch_size} cannot repeat the {len(sizes)} slot sizes {list(sizes)}; use "
                            f"a batch size that is a multiple of {len(sizes)}")
        self.data, self.batch_size, self.crop, self.scale = data, batch_size, tuple(crop), tuple(scale)
        self.seed, self.stream, self.per_axis, self.label_lut = seed, stream, per_axis, label_lut
        self.sizes = [sizes[k % len(sizes)] for k in range(batch_size)] if sizes else [None] * batch_size
        self._cache = _ByteBudgetCache(cache_bytes)
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:  # steps are unbounded; DataLoader only uses the sampler's indices
        return 2**62

    def indices(self, step: int) -> list[int]:
        n = len(self.data)
        out = []
        for k in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, pos = divmod(k, n)
            if self._perm is None or self._perm[0] != epoch:
                self._perm = (epoch, step_rng(self.seed, epoch, f"perm{self.stream}").permutation(n))
            out.append(int(self._perm[1][pos]))
        return out

    def _read(self, i: int, skipped: list[str]) -> tuple[int, Sample]:
        """Sample i, or (when its files cannot be read) the next readable one after it."""
        n = len(self.data)
        for attempt in range(_RETRIES):
            j = (i + attempt) % n
            s = self._cache.get(j)
            if s is not None:
                return j, s
            try:
                s = self.data[j]
            except DigaError as exc:
                skipped.append(str(self.data.pairs[j][0]))
                log.warning("skipped an unreadable sample: %s", exc)
                continue
            self._cache.put(j, s)
            return j, s
        raise DigaError(f"{_RETRIES} consecutive samples from index {i} of {self.data.root} could not be read; "
                        "check the dataset files")

    def __getitem__(self, step: int) -> Batch:
        with one_thread():
            return self._batch(step)

    def _batch(self, step: int) -> Batch:
        rng = step_rng(self.seed, step, f"aug{self.stream}")
        images, labels, used, skipped, resized = [], [], [], [], 0
        for i, size in zip(self.indices(step), self.sizes, strict=True):
            j, s = self._read(i, skipped)
            resized += int(s.label_resized)
            lab = None
            if s.label is not None:
                lab = _as_tensor(self.label_lut[s.label] if self.label_lut is not None else s.label)
            img = _as_tensor(s.image).permute(2, 0, 1)
            img, lab = scale_crop_flip(img, lab, self.crop, self.scale, rng, size, self.per_axis)
            images.append(img)
            labels.append(lab)
            used.append(j)
        lab_t = torch.stack(labels) if labels[0] is not None else None
        return Batch(torch.stack(images), lab_t, used, skipped, resized)


def _as_tensor(a: np.ndarray) -> torch.Tensor:
    """A uint8 array as a tensor, copied only where torch needs it (decoders hand out read-only arrays)."""
    return torch.from_numpy(np.require(a, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"]))


class BatchStream:
    """Iterate the batches of steps [start, stop) in order, from `workers` worker processes (0: this
    process). Counts unreadable samples and resized labels; stops the run past 1 % skipped."""

    def __init__(self, batches: StepBatches, start: int, stop: int, workers: int = 0, device: str = "cpu") -> None:
        self.batches, self.start, self.stop = batches, start, stop
        self.workers, self.device = max(0, workers), device
        self.drawn = 0
        self.skipped: list[str] = []
        self.resized_labels = 0

    def __iter__(self) -> Iterator[Batch]:
        steps = range(self.start, self.stop)
        if self.workers == 0 or len(steps) == 0:
            source: Iterator[Batch] = (self.batches[s] for s in steps)
        else:
            # a generator of its own: the loader's worker seeds must not draw from the global RNG that
            # dropout uses, or a resumed run (which restores that RNG) would diverge
            source = iter(torch.utils.data.DataLoader(
                self.batches, batch_size=None, sampler=steps, num_workers=self.workers,
                pin_memory=self.device.startswith("cuda"), prefetch_factor=2, generator=torch.Generator(),
                worker_init_fn=_worker_init))
        for batch in source:
            self._account(batch)
            yield batch

    def _account(self, batch: Batch) -> None:
        self.drawn += len(batch.indices)
        self.skipped += batch.skipped
        self.resized_labels += batch.resized_labels
        if self.drawn >= MIN_SAMPLES_FOR_SKIP_RULE and len(self.skipped) > MAX_SKIP_SHARE * self.drawn:
            raise DigaError(f"{len(self.skipped)} of {self.drawn} samples drawn from {self.batches.data.root} "
                            f"could not be read (more than {MAX_SKIP_SHARE:.0%}), e.g. {self.skipped[:3]}; "
                            "repair or remove those files, then resume the run")

    def summary(self, what: str) -> None:
        """Log what was skipped or resized over the stream (one line each, only if anything was)."""
        if self.skipped:
            log.warning("%s: %d of %d samples could not be read and were replaced (e.g. %s)", what,
                        len(self.skipped), self.drawn, self.skipped[:3])
        if self.resized_labels:
            log.warning("%s: %d labels differed in size from their image and were resized nearest-neighbour",
                        what, self.resized_labels)


def _worker_init(_worker_id: int) -> None:
    """Worker start-up: Ctrl-C is left to the training process (it finishes the step and saves the state;
    a worker killed by the same SIGINT would leave it waiting), and one thread (an OpenMP pool forked
    from a parent that already used it deadlocks in its first parallel region)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Augment on one thread wherever the batch is made: bilinear resizing differs in the last bit
    between thread counts, and a batch must not depend on whether a worker or this process made it."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def iter_samples(dataset: SegDataset, workers: int | None = None) -> Iterator[Sample]:
    """Every sample of `dataset` in order, decoded in `workers` worker processes (default: the cores, at
    most 4; small sets are read in this process, where starting workers would cost more than it saves)."""
    n = len(dataset)
    workers = default_workers() if workers is None else workers
    if workers == 0 or n <= 8 * workers:
        yield from (dataset[i] for i in range(n))
        return
    yield from torch.utils.data.DataLoader(dataset, batch_size=None, sampler=range(n), num_workers=workers,
                                           prefetch_factor=4, generator=torch.Generator())
