"""Image files in, PNG label maps (and colour overlays) out, through any Runtime."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.datasets import IMAGE_SUFFIXES, read_image
from ..data.images import overlay
from ..errors import DigaError
from ..io import atomic_path
from ..progress import progress_bar


def collect_images(paths: list[Path]) -> list[Path]:
    """Expand folders into their image files (sorted); a clear error for missing paths or no images."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            files.append(p)
        else:
            raise DigaError(f"image {p} does not exist")
    if not files:
        raise DigaError(f"no images found in {', '.join(map(str, paths))} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def predict_files(runtime: Any, files: list[Path], out: Path, *, color: bool = False,
                  batch_size: int = 1) -> dict[str, Any]:
    """Write `<stem>.png` (uint8 train IDs) for every file (+ `<stem>_color.png`); returns a summary."""
    out.mkdir(parents=True, exist_ok=True)
    outputs: list[str] = []
    seconds = 0.0
    with progress_bar(f"predict ({runtime.label})", len(files)) as bar:
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            imgs = [read_image(f) for f in chunk]
            groups: dict[tuple[int, ...], list[int]] = {}
            for i, img in enumerate(imgs):
                groups.setdefault(img.shape, []).append(i)
            for idx in groups.values():
                t0 = time.perf_counter()
                labels = runtime.predict(np.stack([imgs[i] for i in idx]))
                seconds += time.perf_counter() - t0
                for i, lab in zip(idx, labels, strict=True):
                    dest = out / f"{chunk[i].stem}.png"
                    _save_png(lab, dest)
                    outputs.append(str(dest))
                    if color:
                        _save_png(overlay(imgs[i], lab, runtime.meta.palette), out / f"{chunk[i].stem}_color.png")
            bar.advance(len(chunk))
    return {"runtime": runtime.label, "model_hash": runtime.model_hash, "images": len(files), "outputs": outputs,
            "ms_per_image": 1e3 * seconds / len(files)}
