"""Offline pseudo-labels of the target training set, stored as PNG files.

The labelling model runs on every full image at each scale (default 1 and 0.5); the logits are
upsampled to the image, fused by an element-wise max, and the argmax is the pseudo-label. The max
softmax probability is stored beside it (8-bit) for the fixed-threshold baseline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ..data.datasets import Sample, SegDataset
from ..data.labels import IGNORE_INDEX
from ..data.loader import iter_samples
from ..data.transforms import normalize, to_tensor
from ..errors import DigaError
from ..io import atomic_path, atomic_write_json
from ..metrics import ConfusionMatrix
from .centroids import CentroidAccumulator

MANIFEST = "manifest.json"


@torch.no_grad()
def fused_logits(model: nn.Module, x: torch.Tensor, scales: tuple[float, ...] = (1.0, 0.5),
                 centroids: CentroidAccumulator | None = None) -> torch.Tensor:
    """(B,3,H,W) images in [0,1] -> (B,C,H,W): element-wise max over scales of the upsampled logits.
    With `centroids`, the full-scale pass also feeds it (features, argmax at feature resolution):
    the initial class centroids then cost no second pass over the target set."""
    size = x.shape[-2:]
    fused = None
    if centroids is not None and 1.0 not in scales:
        logits, feats = model(normalize(x))
        centroids.add(feats, logits.argmax(1))
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        logits, feats = model(normalize(xs))
        if s == 1.0 and centroids is not None:
            centroids.add(feats, logits.argmax(1))
        up = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        fused = up if fused is None else torch.maximum(fused, up)
    assert fused is not None
    return fused


def _label_path(folder: Path, i: int) -> Path:
    return folder / "labels" / f"{i:05d}.png"


def _conf_path(folder: Path, i: int) -> Path:
    return folder / "confidence" / f"{i:05d}.png"


def _write_png(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(arr, mode="L").save(tmp, format="PNG", compress_level=1)


@torch.no_grad()
def generate_pseudo_labels(model: nn.Module, dataset: SegDataset, out_dir: str | Path,
                           scales: tuple[float, ...] = (1.0, 0.5), batch_size: int = 4, device: str = "cpu",
                           source_checkpoint: str = "", progress=None,
                           centroids: CentroidAccumulator | None = None) -> dict:
    """Label every image of `dataset`; writes labels/NNNNN.png, confidence/NNNNN.png and a manifest
    (and, given `centroids`, accumulates the class centroids of the same model in the same pass).

    If the dataset carries ground truth (the embedded benchmark does), the pseudo-labels' mIoU and
    pixel accuracy are recorded as a diagnostic; nothing downstream reads them.
    """
    out = Path(out_dir)
    model.eval()
    n = len(dataset)
    num_classes = getattr(model, "num_classes", 19)
    meta = getattr(model, "diga_meta", None)
    train_ids = torch.tensor(meta.output_train_ids()) if meta is not None and meta.classes is not None else None
    cm = ConfusionMatrix(19 if train_ids is not None else num_classes)
    has_gt = False
    names = []
    reader = iter_samples(dataset)
    for start in range(0, n, batch_size):
        idx = list(range(start, min(start + batch_size, n)))
        samples = [next(reader) for _ in idx]
        groups = [list(zip(idx, samples, strict=True))]
        if len({s.image.shape for s in samples}) > 1:
            groups = [[(i, s)] for i, s in zip(idx, samples, strict=True)]
        for group in groups:
            x = torch.stack([to_tensor(s.image) for _, s in group]).to(device)
            prob = torch.softmax(fused_logits(model, x, scales, centroids), 1)
            conf, label = prob.max(1)
            label_np = label.to(torch.uint8).cpu().numpy()
            conf_np = (conf * 255).floor().clamp(0, 255).to(torch.uint8).cpu().numpy()
            for k, (i, s) in enumerate(group):
                _write_png(_label_path(out, i), label_np[k])
                _write_png(_conf_path(out, i), conf_np[k])
                names.append(s.name)
                if s.label is not None:
                    has_gt = True
                    pred = label[k].cpu()
                    cm.update(train_ids[pred] if train_ids is not None else pred, torch.from_numpy(s.label))
        if progress:
            progress(idx[-1] + 1, n)
    manifest = {"count": n, "names": names, "scales": list(scales), "checkpoint": str(source_checkpoint)}
    if has_gt:
        summary = cm.summary()
        manifest["diagnostic_vs_ground_truth"] = {"miou": summary["miou"],
                                                  "pixel_accuracy": summary["pixel_accuracy"]}
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


class PseudoLabelledDataset:
    """Target images paired with their stored pseudo-labels (optionally thresholded by confidence)."""

    def __init__(self, images: SegDataset, folder: str | Path, threshold: float | None = None) -> None:
        self.images, self.folder, self.threshold = images, Path(folder), threshold
        try:
            manifest = json.loads((self.folder / MANIFEST).read_text())
        except (OSError, ValueError):
            raise DigaError(f"no pseudo-labels in {self.folder}; run `diga adapt pseudo` first") from None
        if manifest.get("count") != len(images):
            raise DigaError(f"pseudo-labels in {self.folder} cover {manifest.get('count')} images but the target "
                            f"set has {len(images)}; regenerate them for this target set")
        self.dataset = images.dataset
        self.root = images.root

    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_labels(self) -> bool:
        return True

    def __getitem__(self, i: int) -> Sample:
        s = self.images[i]
        label = _read_png(_label_path(self.folder, i))
        if self.threshold is not None:
            conf = _read_png(_conf_path(self.folder, i))
            label = np.where(conf >= np.floor(self.threshold * 255), label, IGNORE_INDEX).astype(np.uint8)
        return Sample(s.image, label, s.name)


def _read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DigaError(f"cannot read pseudo-label {path} ({exc}); regenerate with `diga adapt pseudo`") from None
