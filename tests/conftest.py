"""Shared fixtures: a tiny embedded benchmark on disk (real layouts), quiet progress bars."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("DIGA_NO_PROGRESS", "1")

TINY_SIZE = (64, 128)
TINY_COUNTS = {"source/train": 12, "source/val": 4, "target/train": 12, "target/val": 4}


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64x128 benchmark written by the real generator: source in GTA5 layout, target in Cityscapes layout."""
    from diga_sdk.data.synthetic import generate_benchmark

    return generate_benchmark(tmp_path_factory.mktemp("bench") / "synthetic", seed=3, size=TINY_SIZE,
                              counts=TINY_COUNTS, workers=1)


@pytest.fixture(scope="session")
def tiny_specs(tiny_benchmark: Path) -> dict[str, str]:
    """Dataset specs of the tiny benchmark's four splits."""
    return {
        "source_train": f"gta5:{tiny_benchmark}/source/train",
        "source_val": f"gta5:{tiny_benchmark}/source/val",
        "target_train": f"cityscapes:{tiny_benchmark}/target@train",
        "target_val": f"cityscapes:{tiny_benchmark}/target@val",
    }


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_specs: dict[str, str]) -> Path:
    """A light model trained for a few steps on the tiny source split (real trainer, real checkpoint)."""
    from diga_sdk.adapt.supervised import train_supervised
    from diga_sdk.config import TrainConfig

    cfg = TrainConfig(train_data=tiny_specs["source_train"], val_data=[], steps=3, batch_size=2, crop=(64, 128),
                      scale=(0.75, 1.0), checkpoint_every=2)
    return train_supervised(cfg, tmp_path_factory.mktemp("ckpt"), stage="source_only")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory, tiny_specs: dict[str, str]) -> Path:
    """The online tests' model: a light model trained a little on the tiny source split (one per module)."""
    from online_fixtures import train_small_model

    return train_small_model(tmp_path_factory.mktemp("online-model"), tiny_specs["source_train"])


@pytest.fixture
def one_thread():
    """Run the test on one torch thread (as the vehicle's adapter does), restoring the count after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
