"""Typed configs: YAML round trip, overrides, and one clear error for a bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from diga_sdk.config import TrainConfig, load_config, save_config
from diga_sdk.errors import DigaError


def test_yaml_round_trip_and_overrides(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=7, seed=3)
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml", TrainConfig, {"optim.lr": 0.5, "batch_size": None})
    assert again.steps == 7 and again.seed == 3 and again.optim.lr == 0.5 and again.batch_size == cfg.batch_size


def test_bad_values_name_the_setting(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("steps: many\n")
    with pytest.raises(DigaError, match="'steps'"):
        load_config(tmp_path / "bad.yaml", TrainConfig)
    (tmp_path / "typo.yaml").write_text("stepz: 3\n")
    with pytest.raises(DigaError, match="stepz"):
        load_config(tmp_path / "typo.yaml", TrainConfig)
    with pytest.raises(DigaError, match="not found"):
        load_config(tmp_path / "missing.yaml", TrainConfig)
