"""The online recipes the docs ship (docs/online/*.yaml) load as they are: a typo or a renamed option in a
recipe file would otherwise surface only on the vehicle."""

from __future__ import annotations

from pathlib import Path

import pytest

from diga_sdk.config import load_config
from diga_sdk.errors import DigaError
from diga_sdk.online.adapter import OnlineConfig

RECIPES = Path(__file__).resolve().parent.parent / "docs" / "online"
ONLINE_RECIPES = ["anchored.yaml", "guarded.yaml", "guarded-256x512.yaml", "vehicle-256x512.yaml"]


@pytest.mark.parametrize("name", ONLINE_RECIPES)
def test_online_recipe_loads(name: str) -> None:
    cfg = load_config(RECIPES / name, OnlineConfig)
    assert cfg.batch_frames % cfg.update_spread == 0


def test_vehicle_recipe_is_the_documented_fourth_version() -> None:
    """The vehicle recipe's settings that the protocol judged (protocol.md, "fourth version")."""
    cfg = load_config(RECIPES / "vehicle-256x512.yaml", OnlineConfig)
    assert (cfg.batch_frames, cfg.update_spread, cfg.lr) == (4, 2, 0.01)
    assert cfg.safety.serve_on_look_return and cfg.safety.max_look_shift == 0.08
    assert cfg.source_holdout == 8 and cfg.probation_at_start


def test_a_misspelt_option_in_a_recipe_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "vehicle-256x512.yaml").read_text() + "update_sprad: 2\n")
    with pytest.raises(DigaError, match="update_sprad"):
        load_config(bad, OnlineConfig)
