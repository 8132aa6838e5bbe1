"""Output folders and files are never overwritten silently: a finished run, a stage folder or an output
file is refused unless the user asked to `--resume` or `--overwrite`, and `--resume` on nothing is an
error rather than a fresh start."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from .errors import DigaError

# what training commands leave in their folder: results (a finished run) and saved state (an unfinished one)
RUN_RESULTS = ("model.safetensors", "teacher.safetensors", "translator.safetensors", "centroids.safetensors",
               "bn_recalibrated.safetensors",
               "manifest.json", "stage.json", "results.json")
RUN_STATE = ("state", "state_g", "state_d")
RUN_PARTS = ("labels", "confidence", "snapshots")  # more of what a stage writes; removed by --overwrite


def check_folder_path(path: Path, what: str = "--out") -> Path:
    """`path` may become a folder: neither it nor an existing parent is a file."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                where = "is" if p == path else f"is inside {p}, which is"
                raise DigaError(f"{what} {path} {where} a file, not a folder; choose another path")
            break
    return path


def claim_run_folder(folder: Path, *, resume: bool, overwrite: bool, what: str = "run",
                     results: Iterable[str] = RUN_RESULTS, state: Iterable[str] = RUN_STATE) -> Path:
    """Check `folder` before a training command writes into it.

    - resume: the folder must hold a run (saved state or results) to continue;
    - neither flag: the folder must hold no run (results or state);
    - overwrite: the run's files are removed first, so no stale marker (stage.json, state) survives."""
    if resume and overwrite:
        raise DigaError("pass either --resume (continue the run) or --overwrite (start it again), not both")
    check_folder_path(folder)
    found = [name for name in (*results, *state) if (folder / name).exists()]
    if resume:
        if not found:
            raise DigaError(f"--resume: {folder} holds no {what} to continue (no saved state or results); "
                            "drop --resume to start a new one")
        return folder
    if found and not overwrite:
        finished = [n for n in found if n in tuple(results)]
        kind = "a finished" if finished else "an unfinished"
        raise DigaError(f"{folder} already holds {kind} {what} ({', '.join(found)}); pass --resume to continue it, "
                        "--overwrite to replace it, or choose another --out")
    if overwrite:
        for name in (*results, *state, *RUN_PARTS):
            p = folder / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
    return folder


def claim_output_files(paths: Iterable[Path], overwrite: bool) -> None:
    """Refuse to replace existing files unless `overwrite`; two outputs with one path are always refused."""
    seen: set[Path] = set()
    existing: list[Path] = []
    for p in paths:
        if p in seen:
            raise DigaError(f"two inputs would both be written to {p}; give them different names or predict "
                            "them into different --out folders")
        seen.add(p)
        if p.exists() and not overwrite:
            existing.append(p)
    if existing:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise DigaError(f"output {existing[0]}{more} already exists; pass --overwrite to replace, "
                        "or choose another --out")
