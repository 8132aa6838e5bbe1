"""BatchNorm recalibration on the target (AdaBN): a stage's running statistics re-estimated on target frames.

A stage trains on crops (128x256 on the benchmark) of source images, their mixtures and ClassMix images,
and each train-mode forward moves BatchNorm's running statistics towards that batch. The model is then
used on whole target frames, whose statistics differ on both counts. One no-grad pass over the unlabelled
target-train frames, at their stored size, replaces every running mean and variance with the exact
average over that pass; the weights do not change. No labels are read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..data.datasets import SegDataset
from ..data.transforms import normalize, to_tensor
from ..errors import DigaError

RECALIBRATED = "bn_recalibrated.safetensors"


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers that keep running statistics (the ones recalibration rewrites)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, dataset: SegDataset, batch_size: int = 4, device: str = "cpu",
                          progress: Callable[[int, int], None] | None = None) -> int:
    """Re-estimate every BatchNorm's running mean and variance as the average over `dataset`'s images
    (each batch's statistics weigh equally; images of one size per batch). Returns the images seen.
    Everything else runs in eval mode (dropout off); the model is left in eval mode."""
    layers = batchnorm_layers(model)
    n = len(dataset)
    if not layers or n == 0:
        raise DigaError("BatchNorm recalibration needs a model with BatchNorm layers and at least one "
                        "target image; set bn_recalibration: off for this run")
    momenta = [m.momentum for m in layers]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
        m.train()
    try:
        batch: list[torch.Tensor] = []
        for i in range(n):
            x = to_tensor(dataset[i].image)
            if batch and (x.shape != batch[0].shape or len(batch) == batch_size):
                model(normalize(torch.stack(batch).to(device)))
                batch = []
            batch.append(x)
            if progress:
                progress(i + 1, n)
        model(normalize(torch.stack(batch).to(device)))
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        model.eval()
    return n


def recalibrated_checkpoint(checkpoint: str | Path, dataset: SegDataset, out: Path, batch_size: int = 4,
                            device: str = "cpu") -> Path:
    """`checkpoint` with its BatchNorm statistics recalibrated on `dataset`, written atomically to `out`
    (the trained checkpoint is kept as it was)."""
    from ..models.checkpoint import load_checkpoint, save_checkpoint
    from ..progress import progress_bar

    model, meta = load_checkpoint(checkpoint, device)
    with progress_bar("BatchNorm recalibration", len(dataset)) as bar:
        recalibrate_batchnorm(model, dataset, batch_size, device, progress=lambda done, _n: bar.set(done))
    return save_checkpoint(model, out, meta)
