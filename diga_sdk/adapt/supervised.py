"""Supervised training: the source-only baseline and the target-trained oracle (upper bound)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import TrainConfig, save_config
from ..data.datasets import open_dataset
from ..data.labels import IGNORE_INDEX
from ..data.transforms import BatchSampler, normalize
from ..errors import DigaError
from ..interrupt import interrupt_at_step_boundary, stopped
from ..models.checkpoint import ModelMeta, save_checkpoint
from ..models.registry import build_model, channels_last
from ..progress import log, progress_bar
from .optim import make_optimizer, set_poly_lr
from .state import has_train_state, load_train_state, save_train_state


def seg_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B,C,h,w) logits upsampled to (B,H,W) labels; 255 ignored."""
    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def model_meta(cfg_model, stage: str, input_size: tuple[int, int]) -> ModelMeta:
    return ModelMeta(model_name=cfg_model.name, num_classes=cfg_model.num_classes, model_options=cfg_model.options,
                     input_size=list(input_size), stage=stage)


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
    data = open_dataset(cfg.train_data)
    check_crop(tuple(cfg.crop), data, cfg.train_data)  # both before anything is written
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    torch.manual_seed(cfg.seed)
    sampler = BatchSampler(data, cfg.batch_size, tuple(cfg.crop), tuple(cfg.scale), cfg.seed)
    model = build_model(cfg.model.name, cfg.model.num_classes, backbone_weights=cfg.model.backbone_weights,
                        **cfg.model.options).to(cfg.device)
    channels_last(model)
    optimizer = make_optimizer(model, cfg.optim)
    start = 0
    state_dir = out / "state"
    if resume and has_train_state(state_dir):
        info, _ = load_train_state(state_dir, {"model": model}, optimizer)
        start = int(info["step"])
        log.info("resuming %s from step %d", stage, start)
    model.train()
    t0 = time.time()
    with interrupt_at_step_boundary() as interrupt, progress_bar(stage, cfg.steps, completed=start) as bar:
        for step in range(start, cfg.steps):
            lr = set_poly_lr(optimizer, cfg.optim, step, cfg.steps)
            x, y, _ = sampler.batch(step)
            x, y = x.to(cfg.device), y.to(cfg.device)
            logits, _ = model(normalize(x))
            loss = seg_loss(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.advance(text=f"loss {loss.item():.3f} lr {lr:.4f}")
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                save_train_state(state_dir, {"model": model}, optimizer, {"step": step + 1, "stage": stage})
            if interrupt() and step + 1 < cfg.steps:
                save_train_state(state_dir, {"model": model}, optimizer, {"step": step + 1, "stage": stage})
                raise stopped(stage, step + 1, out)
    log.info("%s: %d steps in %.0f s", stage, cfg.steps - start, time.time() - t0)
    size = tuple(data[0].image.shape[:2])
    ckpt = save_checkpoint(model, out / "model.safetensors", model_meta(cfg.model, stage, size))
    save_train_state(state_dir, {"model": model}, optimizer, {"step": cfg.steps, "stage": stage})
    return ckpt
