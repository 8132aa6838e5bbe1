"""Image files in, PNG label maps (and colour overlays) out, through any Runtime."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.datasets import IMAGE_SUFFIXES, read_image
from ..data.images import overlay
from ..errors import DigaError
from ..io import atomic_path
from ..outputs import check_folder_path, claim_output_files
from ..progress import progress_bar
from .codecs import RequestError, max_pixels_from_env, open_checked


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


def output_names(files: list[Path]) -> list[Path]:
    """Each input's path relative to the inputs' common folder, without suffix: `a/x.png`, `b/x.png` -> `a/x`,
    `b/x` (so equal file names from different folders never land on one output)."""
    resolved = [f.resolve() for f in files]
    common = Path(os.path.commonpath([str(f.parent) for f in resolved]))
    return [f.relative_to(common).with_suffix("") for f in resolved]


def output_paths(files: list[Path], out: Path, color: bool) -> list[tuple[Path, Path | None]]:
    """(label map, overlay or None) destinations under `out` for every input file."""
    pairs = []
    for rel in output_names(files):
        base = out / rel
        pairs.append((base.with_name(f"{base.name}.png"), base.with_name(f"{base.name}_color.png") if color else None))
    return pairs


def claim_outputs(files: list[Path], out: Path, color: bool, overwrite: bool) -> list[tuple[Path, Path | None]]:
    """The destinations, refused when two inputs share one or (without `overwrite`) one exists already."""
    check_folder_path(out)
    pairs = output_paths(files, out, color)
    claim_output_files([p for pair in pairs for p in pair if p is not None], overwrite)
    return pairs


def check_image_size(path: Path, max_pixels: int) -> None:
    """The shared pixel limit, checked from the file's header before decoding it."""
    try:
        open_checked(path, max_pixels).close()
    except RequestError as exc:
        raise DigaError(f"{path}: {exc}") from None
    except Exception:  # unreadable header: read_image reports it with the file named
        pass


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def predict_files(runtime: Any, files: list[Path], out: Path, *, color: bool = False,
                  batch_size: int = 1, overwrite: bool = False, max_pixels: int | None = None) -> dict[str, Any]:
    """Write `<name>.png` (uint8 train IDs) for every file (+ `<name>_color.png`) at its path relative to the
    inputs' common folder under `out`; existing outputs are refused unless `overwrite`. Returns a summary."""
    limit = max_pixels if max_pixels is not None else max_pixels_from_env()
    dests = claim_outputs(files, out, color, overwrite)
    for f in files:
        check_image_size(f, limit)
    out.mkdir(parents=True, exist_ok=True)
    outputs: list[str] = []
    seconds = 0.0
    with progress_bar(f"predict ({runtime.label})", len(files)) as bar:
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            chunk_dests = dests[start:start + batch_size]
            imgs = [read_image(f) for f in chunk]
            groups: dict[tuple[int, ...], list[int]] = {}
            for i, img in enumerate(imgs):
                groups.setdefault(img.shape, []).append(i)
            for idx in groups.values():
                t0 = time.perf_counter()
                labels = runtime.predict(np.stack([imgs[i] for i in idx]))
                seconds += time.perf_counter() - t0
                for i, lab in zip(idx, labels, strict=True):
                    dest, color_dest = chunk_dests[i]
                    _save_png(lab, dest)
                    outputs.append(str(dest))
                    if color_dest is not None:
                        _save_png(overlay(imgs[i], lab, runtime.meta.palette), color_dest)
            bar.advance(len(chunk))
    return {"runtime": runtime.label, "model_hash": runtime.model_hash, "images": len(files), "outputs": outputs,
            "ms_per_image": 1e3 * seconds / len(files)}
