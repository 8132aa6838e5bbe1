"""Shared by the online/fleet tests: a light model trained a little on the tiny source split (so
its predictions carry structure the health signals can see: 60 steps give about 10 mIoU on the
scenario frames; 25 gave about 5, too little for noise frames to damage it reliably)."""

from __future__ import annotations

from pathlib import Path

ONLINE_SIZE = (64, 128)


def online_cfg(**kw):  # noqa: ANN003, ANN201
    """An OnlineConfig at the tests' crop, with quick safety calibration and snapshots, updated by `kw`."""
    from diga_sdk.online.adapter import OnlineConfig

    base = {"crop": ONLINE_SIZE, "safety": {"calib_frames": 3}, "snapshot_every": 3}
    base.update(kw)
    return OnlineConfig.model_validate(base)


def train_small_model(out: Path, source_spec: str, steps: int = 60) -> Path:
    """Trained on 2 torch threads whatever earlier tests left set: the thread count changes the last bits of
    the weights, and the planted-drift test's margins must not depend on which tests ran before it."""
    import torch

    from diga_sdk.adapt.supervised import train_supervised
    from diga_sdk.config import TrainConfig

    cfg = TrainConfig(train_data=source_spec, val_data=[], steps=steps, batch_size=2, crop=(64, 128),
                      scale=(0.9, 1.1), checkpoint_every=1000, optim={"lr": 0.02})
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        return train_supervised(cfg, out, stage="source_only")
    finally:
        torch.set_num_threads(before)
