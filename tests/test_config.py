"""Typed configs: YAML round trip, overrides, and one clear error for a bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from diga_sdk.config import AdaptConfig, TrainConfig, load_config, save_config, settings_of, with_sets
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


def test_with_sets_applies_dotted_strings_on_a_built_config() -> None:
    cfg = AdaptConfig(seed=4)
    got = with_sets(cfg, ["selftrain.target_bn=false", "selftrain.optim.lr=0.5"])
    assert got.selftrain.target_bn is False and got.selftrain.optim.lr == 0.5
    assert got.seed == 4 and got.warmup == cfg.warmup and cfg.selftrain.target_bn is True  # the input is untouched
    with pytest.raises(DigaError, match="selftrain.steps"):
        with_sets(cfg, ["selftrain.steps=many"])


def test_settings_of_reports_the_configs_own_values_of_switched_keys() -> None:
    """What a switch report names as the plain run: the config's values, not the switch's."""
    cfg = with_sets(AdaptConfig(), ["selftrain.optim.lr=0.25"])
    got = settings_of(cfg, ["bn_recalibration=off", "selftrain.target_bn=false", "selftrain.optim.lr=1"])
    assert got == ["bn_recalibration=target", "selftrain.target_bn=true", "selftrain.optim.lr=0.25"]


def test_the_online_recipes_in_docs_load_and_the_vehicle_bounds_are_ordered():
    """The recipes the docs measure are valid configs; the vehicle recipe promotes below where it hands the
    output back, and hands it back below where it rolls back."""
    from diga_sdk.config import load_config
    from diga_sdk.online.adapter import OnlineConfig

    root = Path(__file__).resolve().parents[1] / "docs" / "online"
    recipes = {name: load_config(root / f"{name}.yaml", OnlineConfig)
               for name in ("anchored", "guarded", "guarded-256x512", "vehicle-256x512")}
    v = recipes["vehicle-256x512"].safety
    assert v.promote_max_source_drop < v.serve_max_source_drop < v.max_source_drop
    assert recipes["vehicle-256x512"].probation_at_start and recipes["vehicle-256x512"].source_holdout > 0
