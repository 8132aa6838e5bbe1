"""Supervised training: the source-only baseline and the target-trained oracle (upper bound)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DataConfig, ModelConfig, TrainConfig, ViewConfig, save_config
from ..data.datasets import SegDataset, open_dataset
from ..data.labels import CLASS_NAMES, IGNORE_INDEX, PALETTE
from ..data.loader import BatchStream, StepBatches, default_workers
from ..data.transforms import normalize
from ..errors import DigaError
from ..interrupt import interrupt_at_step_boundary, stopped
from ..models.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from ..models.recompute import enable_activation_checkpointing
from ..models.registry import build_model, channels_last
from ..progress import log, progress_bar
from .optim import make_optimizer, set_poly_lr
from .state import has_train_state, load_train_state, save_train_state

OHEM_THRESHOLD, OHEM_MIN_KEPT = 0.7, 100_000  # the authors' SYNTHIA scripts


def seg_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """Cross-entropy of (B,C,h,w) logits upsampled to (B,H,W) labels; 255 ignored. `ohem` averages only
    the hard pixels: those whose true-class probability is below max(0.7, the min_kept-th smallest)."""
    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    if kind == "ce":
        return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
    pixel = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none").flatten()
    valid = labels.flatten() != IGNORE_INDEX
    if not bool(valid.any()):
        return pixel.sum() * 0.0
    with torch.no_grad():
        p_true = torch.exp(-pixel[valid])  # softmax probability of the labelled class
        kth = min(OHEM_MIN_KEPT, p_true.numel() - 1)
        threshold = max(float(p_true.kthvalue(kth + 1).values), OHEM_THRESHOLD)
    hard = pixel[valid][p_true < threshold]
    return hard.mean() if hard.numel() else pixel[valid].mean()


def label_lut(classes: list[int] | None) -> np.ndarray | None:
    """Train IDs (0..18, 255) -> the model's output indices; None when the model has all 19 classes."""
    if classes is None:
        return None
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for k, t in enumerate(classes):
        lut[t] = k
    return lut


def model_meta(cfg_model: ModelConfig, stage: str, input_size: tuple[int, int],
               data: dict[str, str | None] | None = None) -> ModelMeta:
    ids = cfg_model.classes if cfg_model.classes is not None else list(range(cfg_model.num_classes))
    return ModelMeta(model_name=cfg_model.name, num_classes=cfg_model.num_classes, model_options=cfg_model.options,
                     input_size=list(input_size), stage=stage, classes=cfg_model.classes,
                     class_names=[CLASS_NAMES[t] for t in ids], palette=PALETTE[ids].tolist(), data=data or {})


def step_batches(data: SegDataset, batch_size: int, crop: tuple[int, int], scale: tuple[float, float],
                 view: ViewConfig, seed: int, stream: str, dcfg: DataConfig,
                 classes: list[int] | None = None) -> StepBatches:
    """The training batches of one data stream, as the configs describe them."""
    return StepBatches(data, batch_size, crop, view.scale or scale, seed,
                       stream=stream, sizes=view.sizes, per_axis=view.per_axis,
                       cache_bytes=dcfg.cache_mb * 2**20 // max(1, workers_of(dcfg)), label_lut=label_lut(classes))


def image_size(data: SegDataset) -> tuple[int, int]:
    """(H, W) of the dataset's first image, read from its header (the size exports are traced at)."""
    from PIL import Image

    with Image.open(data.pairs[0][0]) as im:
        return im.size[1], im.size[0]


def workers_of(dcfg: DataConfig) -> int:
    return default_workers() if dcfg.workers is None else dcfg.workers


def check_crop(crop: tuple[int, int], data, spec: str) -> None:
    """A training crop must fit the images (checked on the first one): a bigger crop trains mostly on padding."""
    h, w = data[0].image.shape[:2]
    if crop[0] > h or crop[1] > w:
        raise DigaError(f"crop {crop[0]}x{crop[1]} is larger than the images of {spec} ({h}x{w}); set crop to at "
                        f"most [{h}, {w}]")


def train_supervised(cfg: TrainConfig, out_dir: str | Path, stage: str = "source_only", resume: bool = False) -> Path:
    """Train on `cfg.train_data` with labels; returns the final checkpoint `out_dir/model.safetensors`.

    With `resume`, continues from the last training state in `out_dir/state`; the result equals an
    uninterrupted run (deterministic batches, restored optimizer and RNG).
    """
    out = Path(out_dir)
    data = open_dataset(cfg.train_data, strict=cfg.data.strict)
    check_crop(tuple(cfg.crop), data, cfg.train_data)  # both before anything is written
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    torch.manual_seed(cfg.seed)
    batches = step_batches(data, cfg.batch_size, tuple(cfg.crop), tuple(cfg.scale), cfg.view, cfg.seed, "", cfg.data,
                           cfg.model.classes)
    if cfg.init_checkpoint:  # fine-tune a trained model (its architecture and classes must be cfg.model's)
        model, init_meta = load_checkpoint(cfg.init_checkpoint, cfg.device)
        if (init_meta.model_name, init_meta.num_classes, init_meta.classes) != (
                cfg.model.name, cfg.model.num_classes, cfg.model.classes):
            raise DigaError(f"init checkpoint {cfg.init_checkpoint} is a {init_meta.model_name} with "
                            f"{init_meta.num_classes} classes, the config a {cfg.model.name} with "
                            f"{cfg.model.num_classes}; set model to match it")
    else:
        model = build_model(cfg.model.name, cfg.model.num_classes, backbone_weights=cfg.model.backbone_weights,
                            **cfg.model.options).to(cfg.device)
    channels_last(model)
    if cfg.model.activation_checkpointing:
        log.info("activation checkpointing: %d blocks recomputed in the backward pass",
                 enable_activation_checkpointing(model))
    optimizer = make_optimizer(model, cfg.optim)
    start = 0
    state_dir = out / "state"
    if resume and has_train_state(state_dir):
        info, _ = load_train_state(state_dir, {"model": model}, optimizer)
        start = int(info["step"])
        log.info("resuming %s from step %d", stage, start)
    model.train()
    t0 = time.time()
    stream = BatchStream(batches, start, cfg.steps, workers_of(cfg.data), cfg.device)
    log.info("%s: %d steps on %s (%d images), %d loader workers", stage, cfg.steps - start, cfg.train_data, len(data),
             stream.workers)
    with interrupt_at_step_boundary() as interrupt, progress_bar(stage, cfg.steps, completed=start) as bar:
        for step, batch in enumerate(stream, start):
            lr = set_poly_lr(optimizer, cfg.optim, step, cfg.steps)
            x, y = batch.on(cfg.device)
            logits, _ = model(normalize(x))
            loss = seg_loss(logits, y, cfg.seg_loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.advance(text=f"loss {loss.item():.3f} lr {lr:.4f}")
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                save_train_state(state_dir, {"model": model}, optimizer, {"step": step + 1, "stage": stage})
            if interrupt() and step + 1 < cfg.steps:
                save_train_state(state_dir, {"model": model}, optimizer, {"step": step + 1, "stage": stage})
                raise stopped(stage, step + 1, out)
    stream.summary(stage)
    log.info("%s: %d steps in %.0f s", stage, cfg.steps - start, time.time() - t0)
    size = image_size(data)
    ckpt = save_checkpoint(model, out / "model.safetensors",
                           model_meta(cfg.model, stage, size, {"source": cfg.train_data}))
    save_train_state(state_dir, {"model": model}, optimizer, {"step": cfg.steps, "stage": stage})
    return ckpt
