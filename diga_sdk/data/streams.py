"""Ordered frame streams for on-device adaptation: a dataset split, a folder, or a scenario rendered
by the embedded benchmark's generator, optionally with a condition change midway (fog, dusk) or a
corrupted segment (blank or noise frames) to provoke a collapse.

Scenario frames are `render_item("target", "stream", i, seed, size)`: the target style, frames no
training split contains (`scenario:target`). `scenario:camera2` renders the same scene generator's
target scenes through another camera, written for judging online adaptation on a domain the benchmark
was never calibrated on: a more natural palette (a different colour drift from the source), another
white balance, exposure range, blur, sensor noise and vignette (`CAMERA2_RENDER`).

The `swap` condition is a planted slow drift: over its segment the road's colour is pushed, a little
more each frame, toward the cars' colour of the same frame (up to `SWAP_MAX`), so a self-training model
slowly learns that car-coloured asphalt is car; the labels do not change. Conditions are post-processing of those renders, defined here (the frozen
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

CONDITIONS = ("clear", "fog", "dusk", "blank", "noise", "swap")
SCENARIOS = ("target", "camera2")
SWAP_MAX = 0.9  # share of the car-minus-road colour difference added to road pixels at the end of a swap segment
ROAD, CAR = 0, 13  # train IDs


def camera2_render():  # noqa: ANN201 - a RenderStyle; imported lazily with the generator
    """The `scenario:camera2` camera: the target scenes through other colour drift and camera settings."""
    from .synthetic_render import _SOURCE_BASE, _TARGET_BASE, RenderStyle, _lut

    return RenderStyle(base=0.45 * _lut(_SOURCE_BASE) + 0.55 * _lut(_TARGET_BASE), instance_jitter=18.0,
                       texture=0.12, exposure=(0.75, 1.2), gradient=0.35, shadows=1.0, white_balance=0.1,
                       blur_sigma=(0.3, 0.8), noise_sigma=(5.0, 9.0), vignette=0.4)


def swap_colours(image: np.ndarray, label: np.ndarray, strength: float) -> np.ndarray:
    """Road pixels moved by `strength` x (mean car colour - mean road colour) of this frame (texture kept)."""
    road, car = label == ROAD, label == CAR
    if strength <= 0 or not road.any():
        return image
    x = image.astype(np.float32)
    car_col = x[car].mean(0) if car.sum() >= 16 else np.array([40.0, 40.0, 120.0], np.float32)
    x[road] += strength * (car_col - x[road].mean(0))
    return (np.clip(x, 0, 255) + 0.5).astype(np.uint8)


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
    if condition in ("clear", "swap"):  # swap needs the label: FrameStream.frame applies it
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
        self.scenario = None
        if source.startswith("scenario:"):
            name = source.split(":", 1)[1] or "target"
            if name not in SCENARIOS:
                raise DigaError(f"unknown scenario {name!r}; use scenario:target or scenario:camera2 "
                                "(add conditions with segments)")
            self.scenario = name
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
        if cond == "swap" and label is not None:
            seg = next(s for s in reversed(self.segments) if s.start <= i < s.stop)
            image = swap_colours(image, label, SWAP_MAX * (i - seg.start + 1) / (seg.stop - seg.start))
        if cond in ("blank", "noise") and label is not None:
            label = np.full_like(label, IGNORE_INDEX)  # nothing to score on a frame with no scene
        return Frame(i, apply_condition(image, cond, self.seed, i), label, cond, name)

    def _render(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The generator's clear frame i (image, train-ID label), through the cache when there is one."""
        from .synthetic import render_item

        path = None
        prefix = "target" if self.scenario == "target" else self.scenario
        if self.cache_dir is not None:
            path = self.cache_dir / f"{prefix}_stream_s{self.seed}_{self.size[0]}x{self.size[1]}_{i:06d}.npz"
            if path.is_file():
                try:
                    with np.load(path) as z:
                        return z["image"], z["label"]
                except (OSError, ValueError, KeyError):
                    pass  # a torn or foreign file: render again and overwrite it
        if self.scenario == "camera2":
            from .synthetic import _item_seed
            from .synthetic_render import render
            from .synthetic_scene import TARGET_SCENE, make_scene

            rng = np.random.default_rng(_item_seed(self.seed, "camera2", "stream", i))
            scene = make_scene(self.size[0], self.size[1], TARGET_SCENE, rng)
            image, label_ids = render(scene, camera2_render(), rng), scene.label
        else:
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
