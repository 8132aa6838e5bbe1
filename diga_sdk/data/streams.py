"""Ordered frame streams for on-device adaptation: a dataset split, a folder, or a scenario rendered
by the embedded benchmark's generator, optionally with a condition change midway (fog, dusk) or a
corrupted segment (blank or noise frames) to provoke a collapse.

Scenario frames are `render_item("target", "stream", i, seed, size)`: the target style, frames no
training split contains. Conditions are post-processing of those renders, defined here (the frozen
generator is untouched), and every frame is a pure function of (seed, index), so a stream can be
re-opened and skipped ahead after a restart.

Rendering a 256x512 scenario frame takes ~0.4 s of CPU; with `cache_dir` (or the environment variable
`DIGA_STREAM_CACHE`) each clear render is kept as an .npz (image + label, keyed by seed, index and size)
and re-read by later runs (a fleet's single-vehicle baseline, repeated experiments). The cache holds
the generator's output only; conditions are applied on read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DigaError
from .datasets import open_dataset
from .labels import IGNORE_INDEX, to_train_ids

CONDITIONS = ("clear", "fog", "dusk", "blank", "noise")


@dataclass
class Frame:
    """One stream frame: (H,W,3) uint8 image, (H,W) uint8 train-ID label or None (for scoring only)."""

    index: int
    image: np.ndarray
    label: np.ndarray | None
    condition: str = "clear"
    name: str = ""


def _rng(seed: int, index: int, what: str) -> np.random.Generator:
    import hashlib

    digest = hashlib.sha256(f"stream/{seed}/{index}/{what}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def apply_condition(image: np.ndarray, condition: str, seed: int = 0, index: int = 0) -> np.ndarray:
    """The frame as seen under `condition`: fog (depth-graded haze toward a grey airlight), dusk (dim,
    gamma-darkened, bluish, noisier sensor), blank (flat grey), noise (uniform random pixels)."""
    if condition == "clear":
        return image
    h, w = image.shape[:2]
    rng = _rng(seed, index, condition)
    if condition == "blank":
        return np.full_like(image, 128)
    if condition == "noise":
        return rng.integers(0, 256, size=image.shape, dtype=np.uint8)
    x = image.astype(np.float32) / 255.0
    if condition == "fog":
        # transmission t = exp(-density * depth); depth grows toward the horizon (upper-middle rows)
        rows = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
        depth = np.clip(1.15 - rows * 1.1, 0.05, 1.0)  # near the bottom of the image is close to the camera
        density = 1.6 + 0.2 * float(rng.standard_normal())
        t = np.exp(-density * depth)[..., None]
        airlight = np.float32(0.78 + 0.04 * float(rng.standard_normal()))
        out = x * t + airlight * (1.0 - t)
    elif condition == "dusk":
        out = 0.55 * np.power(x, 1.5) * np.array([0.85, 0.92, 1.1], dtype=np.float32)
        out = out + rng.normal(0.0, 0.02, size=out.shape).astype(np.float32)
    else:
        raise DigaError(f"unknown stream condition {condition!r}; choose one of {', '.join(CONDITIONS)}")
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class Segment:
    """Frames [start, stop) of the stream are seen under `condition`."""

    start: int
    stop: int
    condition: str


def parse_segments(text: str | None, n_frames: int) -> list[Segment]:
    """`fog@0.5` (fog from half-way to the end), `noise@100:140` (frames 100..139), comma-separated;
    positions below 1 are fractions of the stream."""
    segs: list[Segment] = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        cond, _, where = part.partition("@")
        if cond not in CONDITIONS or not where:
            raise DigaError(f"bad stream segment {part!r}; use CONDITION@START[:STOP] with CONDITION one of "
                            f"{', '.join(CONDITIONS)} (e.g. fog@0.5 or noise@100:140)")
        lo, _, hi = where.partition(":")
        try:
            a = _position(float(lo), n_frames)
            b = _position(float(hi), n_frames) if hi else n_frames
        except ValueError:
            raise DigaError(f"bad stream segment {part!r}: positions must be numbers") from None
        if not 0 <= a < b <= n_frames:
            raise DigaError(f"stream segment {part!r} is outside the stream's {n_frames} frames")
        segs.append(Segment(a, b, cond))
    return segs


def _position(v: float, n: int) -> int:
    return int(round(v * n)) if 0 <= v < 1 else int(v)


class FrameStream:
    """An ordered, re-openable stream: `len()`, `frame(i)`, iteration from any start index."""

    def __init__(self, source: str, n_frames: int | None = None, size: tuple[int, int] = (256, 512),
                 segments: str | None = None, seed: int = 0, cache_dir: str | Path | None = None) -> None:
        self.spec, self.seed, self.size = source, seed, tuple(size)
        cache_dir = cache_dir or os.environ.get("DIGA_STREAM_CACHE") or None
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if source.startswith("scenario:"):
            name = source.split(":", 1)[1] or "target"
            if name != "target":
                raise DigaError(f"unknown scenario {name!r}; use scenario:target (add conditions with segments)")
            self._dataset = None
            self.n = int(n_frames or 200)
            self.offset = 0
        else:
            self._dataset = open_dataset(source)
            self.n = min(len(self._dataset), n_frames) if n_frames else len(self._dataset)
        if self.n <= 0:
            raise DigaError(f"stream {source!r} has no frames")
        self.segments = parse_segments(segments, self.n)

    def __len__(self) -> int:
        return self.n

    def condition(self, i: int) -> str:
        cond = "clear"
        for s in self.segments:  # later segments win where they overlap
            if s.start <= i < s.stop:
                cond = s.condition
        return cond

    def frame(self, i: int) -> Frame:
        if not 0 <= i < self.n:
            raise IndexError(i)
        if self._dataset is None:
            image, label = self._render(i)
            name = f"stream_{self.seed}_{i:06d}"
        else:
            s = self._dataset[i]
            image, label, name = s.image, s.label, s.name
        cond = self.condition(i)
        if cond in ("blank", "noise") and label is not None:
            label = np.full_like(label, IGNORE_INDEX)  # nothing to score on a frame with no scene
        return Frame(i, apply_condition(image, cond, self.seed, i), label, cond, name)

    def _render(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The generator's clear frame i (image, train-ID label), through the cache when there is one."""
        from .synthetic import render_item

        path = None
        if self.cache_dir is not None:
            path = self.cache_dir / f"target_stream_s{self.seed}_{self.size[0]}x{self.size[1]}_{i:06d}.npz"
            if path.is_file():
                try:
                    with np.load(path) as z:
                        return z["image"], z["label"]
                except (OSError, ValueError, KeyError):
                    pass  # a torn or foreign file: render again and overwrite it
        image, label_ids = render_item("target", "stream", i, self.seed, self.size)
        label = to_train_ids(label_ids, "cityscapes")
        if path is not None:
            from ..io import atomic_path

            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, image=image, label=label)
        return image, label

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
        for i in range(start, self.n if stop is None else min(stop, self.n)):
            yield self.frame(i)

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def describe(self) -> dict:
        return {"spec": self.spec, "frames": self.n, "seed": self.seed, "size": list(self.size),
                "segments": [s.__dict__ for s in self.segments]}
