"""The authors' recipes (fy-vision/DiGA, GTA5 and SYNTHIA to Cityscapes) as named presets.

A preset is a partial config; `config.load_config` layers it under the user's YAML, options and
`--set key=value`. Values follow the authors' training scripts: DeepLabV2-ResNet101 with their head,
SGD 2.5e-4 / momentum 0.9 / weight decay 5e-4 / poly 0.9 with the whole head at 10x, 512x896
crops from a batch that mixes one downscaled and two full-size images per domain, EMA teacher,
symmetric distillation (the mixed view's pair at 0.25), evaluation at scales 1.0 + 0.5 max-fused.
Where the scripts differ between stages (warm-up 1 small + 2 full images, self-training 2 + 1), each
stage carries its own views. `gta5-dg` is the authors' domain generalisation (`diga adapt dg`).
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import DigaError

_SGD = {"lr": 2.5e-4, "momentum": 0.9, "weight_decay": 5e-4, "poly_power": 0.9, "head_lr_mult": 10.0,
        "head_scope": "head"}
_CROP = [512, 896]
_SCALE = [0.7, 1.0]


def _view(sizes: list[list[int] | None], scale: list[float], per_axis: bool) -> dict[str, Any]:
    return {"sizes": sizes, "scale": scale, "per_axis": per_axis}


# Cityscapes train IDs of SYNTHIA's 16 classes: all but terrain (9), truck (14) and train (16)
SYNTHIA_CLASSES = [t for t in range(19) if t not in (9, 14, 16)]
_TGT_SMALL = [512, 1024]  # Cityscapes frames downscaled; None below: the stored 1024x2048


def _recipe(classes: list[int] | None, warmup_steps: int, selftrain_steps: int, warmup_src: list[list[int] | None],
            selftrain_src: list[list[int] | None], selftrain_tgt: list[list[int] | None],
            warmup_src_scale: list[float], warmup_lambda: float, seg_loss: str) -> dict[str, dict[str, Any]]:
    num_classes = 19 if classes is None else len(classes)
    model = {"name": "deeplabv2_r101", "num_classes": num_classes, "classes": classes}
    adapt = {
        "model": model,
        "warmup_init": "backbone",  # warm-up trains from the (ImageNet) backbone, as the authors' does
        "crop": _CROP, "scale": _SCALE, "seg_loss": seg_loss,
        "eval": {"scales": [1.0, 0.5]},
        "pseudo": {"scales": [1.0, 0.5], "batch_size": 1},
        "translator": {"kind": "learned", "steps": 50000, "batch_size": 2},
        "warmup": {
            "steps": warmup_steps, "batch_size": len(warmup_src), "optim": _SGD,
            "lambda_distil": warmup_lambda, "mixed_scale": 0.25, "aug_beta": 0.4, "ema_max": 0.999,
            "source_view": _view(warmup_src, warmup_src_scale, True),
            "target_view": _view([_TGT_SMALL] + [None] * (len(warmup_src) - 1), [1.0, 1.0], False),
            "target_bn": True,
        },
        "selftrain": {
            "steps": selftrain_steps, "batch_size": len(selftrain_src), "optim": _SGD,
            "lambda_distil": 0.25, "mixed_scale": 0.25, "aug_beta": 0.3, "ema_max": 0.999,
            "source_view": _view(selftrain_src, _SCALE, True),
            "target_view": _view(selftrain_tgt, _SCALE, True),
            "mix_forward": "separate",
            "target_bn": False,  # the authors' self-training has no no-grad target pass (the SDK default has)
        },
        "selection": {"kind": "consensus", "centroid_momentum": 1e-4, "centroid_min_pixels": 5,
                      "centroid_labels": "consensus", "centroid_init": "image", "online_centroids": True},
        "rounds": 0,
        "bn_recalibration": "off",  # the authors' stages hand their weights and statistics on as trained
        "checkpoint_every": 1000,  # a DeepLabV2 training state (student, teacher, momentum) is ~0.5 GB
    }
    train = {"model": model, "optim": _SGD, "steps": warmup_steps, "batch_size": len(warmup_src), "crop": _CROP,
             "scale": _SCALE, "seg_loss": seg_loss, "eval": {"scales": [1.0, 0.5]},
             "view": _view(warmup_src, warmup_src_scale, True), "checkpoint_every": 1000}
    return {"adapt": adapt, "train": train}


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # GTA5 frames 1052x1914: per step one rescaled to 720x1280 and two at full size, each resized per
    # axis by 0.7-1.0, cropped to 512x896; Cityscapes one at 512x1024 and two at 1024x2048
    "gta5-cityscapes": _recipe(None, 80_000, 80_000, [[720, 1280], None, None], [[720, 1280], [720, 1280], None],
                               [_TGT_SMALL, _TGT_SMALL, None], _SCALE, 0.5, "ce"),
    # SYNTHIA frames 760x1280 (the scripts' "full" size 1140x1920): a 16-class head, OHEM cross-entropy,
    # warm-up with one 760x1280 and three 1140x1920 images, random crops only; self-training 1 + 2
    "synthia-cityscapes": _recipe(SYNTHIA_CLASSES, 60_000, 80_000,
                                  [[760, 1280], [1140, 1920], [1140, 1920], [1140, 1920]],
                                  [[760, 1280], [1140, 1920], [1140, 1920]], [_TGT_SMALL, None, None],
                                  [1.0, 1.0], 0.25, "ohem"),
}


def _dg_recipe() -> dict[str, dict[str, Any]]:
    """The authors' domain generalisation (domain_generalization/train_DiGA_DG.py): GTA5 only, per step two
    frames rescaled to 720x1280 and two at full size, each resized per axis by 0.7-1.0 and cropped to 512x896;
    80k steps of CE + 0.5 * symmetric distillation between the clean and the photometric view
    (0.4 * aug(x) + 0.6 * x; the pair whose teacher sees the photometric view at 0.5, their loss's default);
    SGD as in adaptation; trained from the ImageNet backbone, evaluated at scales 1.0 + 0.5 max-fused.
    Their script also runs a no-grad forward of Cityscapes train images each step, which moves BatchNorm
    statistics towards the target; here the DG stage opens no target image at all (target_bn off)."""
    model = {"name": "deeplabv2_r101", "num_classes": 19, "classes": None}
    view = _view([[720, 1280], [720, 1280], None, None], _SCALE, True)
    source_only = {"model": model, "optim": _SGD, "steps": 80_000, "batch_size": 4, "crop": _CROP, "scale": _SCALE,
                   "view": view, "val_data": [], "checkpoint_every": 1000}  # the baseline: same schedule and views, CE only
    dg = {"steps": 80_000, "batch_size": 4, "optim": _SGD, "lambda_distil": 0.5, "mixed_scale": 0.5,
          "aug_beta": 0.4, "ema_max": 0.999, "mix": False, "target_bn": False, "source_view": view}
    return {"dg": {"model": model, "source_only": source_only, "dg": dg, "dg_init": "backbone", "crop": _CROP,
                   "scale": _SCALE, "eval_scales": [1.0, 0.5], "checkpoint_every": 1000}}


PRESETS["gta5-dg"] = _dg_recipe()

# the command each kind of preset settings belongs to (for messages)
KIND_COMMAND = {"adapt": "diga adapt", "train": "diga train", "dg": "diga adapt dg"}


def preset_config(name: str, kind: str) -> dict[str, Any]:
    """The nested settings of preset `name` for a config of `kind` ("adapt", "train" or "dg")."""
    if name not in PRESETS:
        raise DigaError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    if kind not in PRESETS[name]:
        uses = " or ".join(f"`{KIND_COMMAND[k]}`" for k in PRESETS[name])
        raise DigaError(f"preset {name!r} is a recipe for {uses}, not `{KIND_COMMAND[kind]}`")
    return copy.deepcopy(PRESETS[name][kind])


def preset_kinds(name: str) -> list[str]:
    """The config kinds preset `name` has settings for, the first being its main use."""
    if name not in PRESETS:
        raise DigaError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return list(PRESETS[name])
