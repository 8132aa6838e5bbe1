"""The embedded synthetic driving benchmark: a GTA-like source and a Cityscapes-like target.

`generate_benchmark(out, seed)` writes the source in the GTA5 layout (`source/{train,val}/images`,
`.../labels` with Cityscapes label IDs) and the target in the Cityscapes layout
(`target/leftImg8bit/{split}/{city}/*_leftImg8bit.png`, `target/gtFine/.../*_gtFine_labelIds.png`).
Every image is a pure function of (seed, domain, split, index), so output is deterministic.
The domain styles were calibrated once (see docs/data.md) and are frozen: do not re-tune them.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DigaError
from ..io import atomic_write_json
from ..outputs import check_folder_path
from .labels import LABELS
from .synthetic_render import SOURCE_RENDER, TARGET_RENDER, render
from .synthetic_scene import SOURCE_SCENE, TARGET_SCENE, make_scene

GENERATOR_VERSION = 2
DEFAULT_SIZE = (256, 512)
DEFAULT_COUNTS = {"source/train": 400, "source/val": 100, "target/train": 400, "target/val": 100}
CITIES = {"train": ("aachen", "bochum", "bremen"), "val": ("frankfurt", "lindau")}
_CITYSCAPES_PALETTE = np.zeros((256, 3), dtype=np.uint8)
for _lab in LABELS:
    if _lab.id >= 0:
        _CITYSCAPES_PALETTE[_lab.id] = _lab.color


@dataclass(frozen=True)
class _Job:
    domain: str
    split: str
    index: int
    seed: int
    size: tuple[int, int]
    image_path: str
    label_path: str


def _item_seed(seed: int, domain: str, split: str, index: int) -> int:
    digest = hashlib.sha256(f"{seed}/{domain}/{split}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def render_item(domain: str, split: str, index: int, seed: int,
                size: tuple[int, int] = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One benchmark sample: (H,W,3) uint8 image and (H,W) uint8 Cityscapes label IDs."""
    rng = np.random.default_rng(_item_seed(seed, domain, split, index))
    scene_style, render_style = (SOURCE_SCENE, SOURCE_RENDER) if domain == "source" else (TARGET_SCENE, TARGET_RENDER)
    scene = make_scene(size[0], size[1], scene_style, rng)
    return render(scene, render_style, rng), scene.label


def _run_job(job: _Job) -> None:
    image, label = render_item(job.domain, job.split, job.index, job.seed, job.size)
    Image.fromarray(image).save(job.image_path, compress_level=1)
    if job.domain == "source":  # GTA5 stores labels as palette PNGs whose indices are label IDs
        lab = Image.fromarray(label, mode="P")
        lab.putpalette(_CITYSCAPES_PALETTE.reshape(-1).tolist())
    else:
        lab = Image.fromarray(label, mode="L")
    lab.save(job.label_path, compress_level=1)


def _jobs(root: Path, seed: int, size: tuple[int, int], counts: dict[str, int]) -> list[_Job]:
    jobs = []
    for key, n in counts.items():
        domain, split = key.split("/")
        for i in range(n):
            if domain == "source":
                d = root / "source" / split
                img, lab = d / "images" / f"{i:05d}.png", d / "labels" / f"{i:05d}.png"
            else:
                cities = CITIES[split]
                city = cities[i % len(cities)]
                stem = f"{city}_{i // len(cities):06d}_000019"
                img = root / "target" / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
                lab = root / "target" / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
            jobs.append(_Job(domain, split, i, seed, size, str(img), str(lab)))
    return jobs


def generate_benchmark(out: str | os.PathLike[str], seed: int = 0, size: tuple[int, int] = DEFAULT_SIZE,
                       counts: dict[str, int] | None = None, workers: int | None = None,
                       progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the benchmark under `out` (built in a temp folder, then renamed: never half-written)."""
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    unknown = set(counts) - set(DEFAULT_COUNTS)
    if unknown:
        raise DigaError(f"unknown benchmark splits {sorted(unknown)}; use {sorted(DEFAULT_COUNTS)}")
    if size[0] < 32 or size[1] < 32:
        raise DigaError(f"benchmark size {size} is too small; use at least 32x32")
    root = Path(out)
    check_folder_path(root, "benchmark folder")
    manifest = {"generator_version": GENERATOR_VERSION, "seed": seed, "size": list(size), "counts": counts}
    if (root / "manifest.json").exists():
        if json.loads((root / "manifest.json").read_text()) == manifest:
            return root
        raise DigaError(f"{root} already holds a different benchmark; choose another --out or delete it")
    if root.exists() and any(root.iterdir()):
        raise DigaError(f"{root} exists and is not empty; choose another --out")
    tmp = root.with_name(f".{root.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    jobs = _jobs(tmp, seed, tuple(size), counts)
    for d in {Path(j.image_path).parent for j in jobs} | {Path(j.label_path).parent for j in jobs}:
        d.mkdir(parents=True, exist_ok=True)
    workers = workers or min(os.cpu_count() or 1, 4)
    done = 0
    if workers > 1:
        # spawn, not fork: forking a process that already runs torch/onnxruntime threads can deadlock.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for _ in pool.map(_run_job, jobs, chunksize=16):
                done += 1
                if progress:
                    progress(done, len(jobs))
    else:
        for job in jobs:
            _run_job(job)
            done += 1
            if progress:
                progress(done, len(jobs))
    atomic_write_json(tmp / "manifest.json", manifest)
    if root.exists():
        root.rmdir()
    os.replace(tmp, root)
    return root


def default_benchmark_dir(seed: int = 0) -> Path:
    """Where `synthetic` dataset specs find (and lazily create) the benchmark: $DIGA_DATA_DIR or a cache."""
    base = Path(os.environ.get("DIGA_DATA_DIR", Path.home() / ".cache" / "diga-sdk"))
    if "DIGA_DATA_DIR" in os.environ:
        check_folder_path(base, "DIGA_DATA_DIR")
    return base / f"synthetic-v{GENERATOR_VERSION}-seed{seed}"
