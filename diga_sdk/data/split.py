"""A labelled share of one dataset and the unlabelled rest, as a split file and a dataset spec.

`RUN/split.txt` lists the labelled images one per line, relative to the dataset's root, after a
header naming the dataset (`# dataset: SPEC`). `split:RUN/split.txt@labelled` opens the listed
images with their labels, `split:RUN/split.txt@unlabelled` the rest without labels. The authors'
list files (`train_image_labeled_1-8.txt`: `city/NAME_leftImg8bit.png` lines) are read by matching
each line against the end of an image path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DigaError
from ..io import atomic_write_bytes
from .datasets import SegDataset

HEADER = "# diga labelled split"
PARTS = ("labelled", "unlabelled")


class SubsetDataset(SegDataset):
    """Some of another dataset's samples, with the same label mapping."""

    def __init__(self, base: SegDataset, indices: list[int]) -> None:
        self.dataset = base.dataset
        super().__init__([base.pairs[i] for i in indices], base.root)


def choose_labelled(n: int, fraction: float, seed: int) -> list[int]:
    """round(fraction * n) indices (at least 1), drawn without replacement by `seed`, sorted."""
    if not 0.0 < fraction <= 1.0:
        raise DigaError(f"--labelled-fraction must be in (0, 1], got {fraction}")
    k = max(1, int(round(fraction * n)))
    return sorted(int(i) for i in np.random.default_rng(seed).permutation(n)[:k])


def relative_names(data: SegDataset) -> list[str]:
    """Each image's path relative to the dataset root, with forward slashes."""
    return [p.relative_to(data.root).as_posix() for p, _ in data.pairs]


def match_list(lines: list[str], data: SegDataset, source: str) -> list[int]:
    """Indices of the images named by `lines` (each the whole relative path or its tail)."""
    names = relative_names(data)
    by_tail: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        parts = name.split("/")
        for k in range(len(parts)):
            by_tail.setdefault("/".join(parts[k:]), []).append(i)
    out: list[int] = []
    for line in lines:
        hits = by_tail.get(line.strip().lstrip("./"), [])
        if not hits:
            raise DigaError(f"{source}: {line!r} names no image of the dataset at {data.root}; "
                            "list paths relative to the image folder, one per line")
        if len(hits) > 1:
            raise DigaError(f"{source}: {line!r} matches {len(hits)} images under {data.root}; give more of its path")
        out.append(hits[0])
    if len(set(out)) != len(out):
        raise DigaError(f"{source} lists an image twice; each labelled image once")
    return sorted(out)


def read_list_lines(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise DigaError(f"split list {p} does not exist")
    lines = [ln.strip() for ln in p.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def split_text(spec: str, data: SegDataset, labelled: list[int], how: str) -> str:
    """The split file's text: header (dataset spec, how the share was chosen) and the labelled images."""
    names = relative_names(data)
    return "\n".join([HEADER, f"# dataset: {spec}", f"# labelled: {len(labelled)} of {len(names)} ({how})"]
                     + [names[i] for i in labelled]) + "\n"


def write_split(path: str | Path, text: str) -> Path:
    atomic_write_bytes(path, text.encode())
    return Path(path)


def read_split(path: str | Path) -> tuple[str, list[str]]:
    """(dataset spec, labelled lines) of a split file written by `write_split`."""
    p = Path(path)
    if not p.is_file():
        raise DigaError(f"split file {p} does not exist; `diga adapt semi` writes it as RUN/split.txt")
    lines = p.read_text().splitlines()
    spec = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("# dataset:")), None)
    if not lines or lines[0] != HEADER or not spec:
        raise DigaError(f"{p} is not a split file written by `diga adapt semi` (no '# dataset:' header); "
                        "pass a plain list of labelled images as --labelled-list instead")
    return spec, read_list_lines(p)


def open_split(path: str, part: str, labelled: bool = True) -> SubsetDataset:
    """`split:PATH@labelled` (with labels) or `split:PATH@unlabelled` (never with labels)."""
    from .datasets import open_dataset

    if part not in PARTS:
        raise DigaError(f"bad dataset spec 'split:{path}@{part}'; use split:FILE@labelled or split:FILE@unlabelled")
    spec, lines = read_split(path)
    data = open_dataset(spec, labelled=labelled and part == "labelled")
    chosen = match_list(lines, data, path)
    if part == "labelled":
        return SubsetDataset(data, chosen)
    keep = set(chosen)
    return SubsetDataset(data, [i for i in range(len(data)) if i not in keep])
