"""The authors' recipes as presets: `diga config show` prints exactly their values; --set layers on top."""

from __future__ import annotations

import pytest
import yaml

from diga_sdk.cli import main
from diga_sdk.config import AdaptConfig, load_config
from diga_sdk.errors import DigaError


def _show(capsys, *args: str) -> dict:
    assert main(["config", "show", *args]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_gta5_cityscapes_preset_is_the_authors_recipe(capsys) -> None:
    cfg = _show(capsys, "--preset", "gta5-cityscapes")
    assert cfg["model"]["name"] == "deeplabv2_r101" and cfg["model"]["num_classes"] == 19
    assert cfg["crop"] == [512, 896] and cfg["eval"]["scales"] == [1.0, 0.5] and cfg["seg_loss"] == "ce"
    for stage, steps, lam, beta in (("warmup", 80_000, 0.5, 0.4), ("selftrain", 80_000, 0.25, 0.3)):
        st = cfg[stage]
        assert st["steps"] == steps and st["lambda_distil"] == lam and st["aug_beta"] == beta
        assert st["optim"] == {"lr": 2.5e-4, "momentum": 0.9, "weight_decay": 5e-4, "poly_power": 0.9,
                               "head_lr_mult": 10.0, "head_scope": "head"}
        assert st["source_view"]["scale"] == [0.7, 1.0] and st["source_view"]["per_axis"] is True
    # warm-up: one GTA5 frame rescaled to 720x1280 and two at full size; Cityscapes one at 512x1024, two full
    assert cfg["warmup"]["source_view"]["sizes"] == [[720, 1280], None, None]
    assert cfg["warmup"]["target_view"]["sizes"] == [[512, 1024], None, None]
    assert cfg["warmup"]["target_bn"] is True and cfg["warmup"]["batch_size"] == 3
    assert cfg["selftrain"]["mix_forward"] == "separate" and cfg["selftrain"]["target_bn"] is False
    assert cfg["selection"]["centroid_min_pixels"] == 5 and cfg["selection"]["centroid_labels"] == "consensus"
    assert cfg["selection"]["centroid_init"] == "image" and cfg["warmup_init"] == "backbone"
    # the authors' stages hand their weights on as trained; the SDK default re-estimates BatchNorm statistics
    assert cfg["bn_recalibration"] == "off" and AdaptConfig().bn_recalibration == "target"


def test_synthia_cityscapes_preset_has_16_classes_and_ohem(capsys) -> None:
    cfg = _show(capsys, "--preset", "synthia-cityscapes", "--set", "warmup.steps=2", "--set", "eval.scales=[1.0]")
    assert cfg["model"]["num_classes"] == 16 and len(cfg["model"]["classes"]) == 16
    assert not {9, 14, 16} & set(cfg["model"]["classes"])  # terrain, truck, train: absent from SYNTHIA
    assert cfg["seg_loss"] == "ohem" and cfg["selftrain"]["steps"] == 80_000
    assert cfg["warmup"]["steps"] == 2 and cfg["eval"]["scales"] == [1.0]  # --set wins over the preset


def test_set_errors_are_one_line(capsys) -> None:
    assert main(["config", "show", "--set", "warmup.steps"]) == 1
    assert "is not key=value" in "".join(capsys.readouterr())
    with pytest.raises(DigaError, match="unknown preset 'gta6'"):
        load_config(None, AdaptConfig, preset="gta6")
    with pytest.raises(DigaError, match="bad config value 'warmup.bogus'"):
        load_config(None, AdaptConfig, sets=["warmup.bogus=1"])


def test_a_preset_refuses_the_embedded_benchmark(tmp_path, capsys) -> None:
    assert main(["adapt", "--preset", "gta5-cityscapes", "--out", str(tmp_path / "r")]) == 1
    assert "give --source gta5:PATH" in "".join(capsys.readouterr())


def test_user_data_never_evaluates_on_the_embedded_benchmark() -> None:
    cfg = load_config(None, AdaptConfig, {"source": "gta5:/data/gta5", "target": "cityscapes:/data/cs@train"})
    assert cfg.eval_sets() == ["cityscapes:/data/cs@val"]
    cfg = load_config(None, AdaptConfig, {"source": "gta5:/data/gta5", "target": "folder:/data/fleet"})
    assert cfg.eval_sets() == []
    assert load_config(None, AdaptConfig).eval_sets() == ["synthetic:target@val", "synthetic:source@val"]


def test_synthia_classes_are_the_16_class_protocol() -> None:
    from diga_sdk.data.labels import SUBSETS
    from diga_sdk.presets import SYNTHIA_CLASSES

    assert tuple(SYNTHIA_CLASSES) == SUBSETS[16]


def test_gta5_dg_preset_is_the_authors_dg_recipe(capsys) -> None:
    cfg = _show(capsys, "--preset", "gta5-dg")  # `--for` follows the preset: a DGConfig
    sgd = {"lr": 2.5e-4, "momentum": 0.9, "weight_decay": 5e-4, "poly_power": 0.9, "head_lr_mult": 10.0,
           "head_scope": "head"}
    assert cfg["model"]["name"] == "deeplabv2_r101" and cfg["model"]["num_classes"] == 19
    dg = cfg["dg"]
    assert dg["steps"] == 80_000 and dg["lambda_distil"] == 0.5 and dg["aug_beta"] == 0.4
    assert dg["mixed_scale"] == 0.5 and dg["mix"] is False and dg["target_bn"] is False and dg["optim"] == sgd
    # batch 2 + 2: two GTA5 frames rescaled to 720x1280 and two at full size, per-axis 0.7-1.0, 512x896 crops
    assert dg["batch_size"] == 4 and dg["source_view"]["sizes"] == [[720, 1280], [720, 1280], None, None]
    assert dg["source_view"]["scale"] == [0.7, 1.0] and dg["source_view"]["per_axis"] is True
    assert cfg["crop"] == [512, 896] and cfg["eval_scales"] == [1.0, 0.5] and cfg["dg_init"] == "backbone"
    base = cfg["source_only"]  # the baseline: same data, views and schedule, CE only
    assert base["steps"] == 80_000 and base["optim"] == sgd and base["view"] == dg["source_view"]
    cfg = _show(capsys, "--preset", "gta5-dg", "--set", "dg.steps=3")
    assert cfg["dg"]["steps"] == 3


def test_gta5_dg_preset_belongs_to_adapt_dg(tmp_path, capsys) -> None:
    with pytest.raises(DigaError, match="recipe for `diga adapt dg`"):
        load_config(None, AdaptConfig, preset="gta5-dg")
    assert main(["adapt", "dg", "--preset", "gta5-dg", "--out", str(tmp_path / "r")]) == 1
    assert "give --source gta5:PATH" in "".join(capsys.readouterr())
    assert main(["adapt", "dg", "--preset", "gta5-dg", "--source", f"gta5:{tmp_path / 'nowhere'}", "--eval",
                 "cityscapes:/data/cs@val", "--set", "dg.steps=2", "--out", str(tmp_path / "r")]) == 1
    # the preset is taken; the data is checked before any training
    assert "GTA5 images folder" in "".join(capsys.readouterr()) and not (tmp_path / "r").exists()


def test_demo_schedule_gives_each_model_its_steps(tmp_path) -> None:
    """`demo_adapt_config` and the Segmenter's `preset="demo"` train a fast checkpoint with fast's steps (twice
    light's self-training, its training step being about half as costly), other models with light's."""
    from diga_sdk.bench.ablation import DEMO_STEPS, demo_adapt_config, demo_schedule
    from diga_sdk.models import build_model
    from diga_sdk.models.checkpoint import ModelMeta, save_checkpoint
    from diga_sdk.segmenter import _adapt_config

    light, fast = demo_adapt_config("x.safetensors"), demo_adapt_config("x.safetensors", model="fast")
    assert (light.warmup.steps, light.selftrain.steps) == DEMO_STEPS["light"] == (200, 100)
    assert (fast.warmup.steps, fast.selftrain.steps) == DEMO_STEPS["fast"]
    assert fast.selftrain.steps == 2 * light.selftrain.steps and fast.model.name == "fast"
    deeplab = demo_adapt_config("x.safetensors", model="deeplabv2_r101")
    assert (deeplab.warmup.steps, deeplab.selftrain.steps) == DEMO_STEPS["light"]
    quick = demo_adapt_config("x.safetensors", quick=True, model="fast")
    assert (quick.warmup.steps, quick.selftrain.steps, quick.checkpoint_every) == (4, 4, 2)
    # everything but the steps is the same settings for both models
    assert fast.selftrain.model_copy(update={"steps": 100}) == light.selftrain
    ckpt = save_checkpoint(build_model("fast"), tmp_path / "fast.safetensors", ModelMeta(model_name="fast"))
    cfg = _adapt_config("demo", None, str(ckpt), {"init_checkpoint": str(ckpt)})
    assert (cfg.model.name, cfg.warmup.steps, cfg.selftrain.steps) == ("fast", *DEMO_STEPS["fast"])
    w, s = DEMO_STEPS["fast"]
    assert demo_schedule(["light", "fast"]) == ("make demo (light: warm-up 200, self-training 100 per round; fast: "
                                                f"warm-up {w}, self-training {s} per round; one refinement round)")
