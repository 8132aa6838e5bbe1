"""Typed configs: every hyper-parameter has one home here, read from and written to YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import DigaError
from .io import atomic_write_bytes

T = TypeVar("T", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelConfig(_Strict):
    """Which segmenter to build and with what options."""

    name: str = "light"
    num_classes: int = 19
    options: dict[str, Any] = Field(default_factory=dict)
    backbone_weights: str | None = None  # optional ImageNet backbone (safetensors), never downloaded


class OptimConfig(_Strict):
    """SGD with momentum and a polynomial learning-rate decay, as in DeepLab training."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    head_lr_mult: float = 1.0  # learning-rate multiplier of the classifier head


class TrainConfig(_Strict):
    """Supervised training (source-only baseline, or the target oracle)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train_data: str = "synthetic:source@train"
    val_data: list[str] = Field(default_factory=lambda: ["synthetic:source@val", "synthetic:target@val"])
    steps: int = 500
    batch_size: int = 4
    crop: tuple[int, int] = (128, 256)
    scale: tuple[float, float] = (0.75, 1.25)
    seed: int = 0
    checkpoint_every: int = 100
    device: str = "cpu"


def load_config(path: str | Path | None, cls: type[T], overrides: dict[str, Any] | None = None) -> T:
    """Read a YAML config (or the defaults) into `cls`, then apply dotted-key overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise DigaError(f"config file {p} not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise DigaError(f"config file {p} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise DigaError(f"config file {p} must hold a mapping of settings")
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise DigaError(f"bad config value {where!r}: {first['msg']}") from None


def config_to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: BaseModel, path: str | Path) -> None:
    atomic_write_bytes(path, config_to_yaml(cfg).encode())


# ---- DiGA adaptation (issue 3): every hyper-parameter of the pipeline has its home here ----

class TranslatorConfig(_Strict):
    """Source->target image translator: `fourier` (low-frequency amplitude swap) or `learned` (CycleGAN-style)."""

    kind: str = Field("fourier", pattern="^(fourier|learned)$")
    fourier_window: float = 0.05  # side of the swapped low-frequency square, as a fraction of min(H, W)
    checkpoint: str | None = None  # a learned translator written by `diga adapt translator`
    steps: int = 2000
    batch_size: int = 2
    lr: float = 2e-4
    width: int = 32
    res_blocks: int = 4
    disc_scales: int = 2
    lambda_cycle: float = 10.0
    lambda_recon: float = 5.0
    lambda_edge: float = 1.0
    lambda_perceptual: float = 1.0
    vgg_weights: str | None = None  # VGG16 (torchvision names, safetensors): enables the perceptual loss


class DistilConfig(_Strict):
    """One DiGA training stage (warm-up or self-training): steps, views and loss weights."""

    steps: int = 300
    batch_size: int = 4
    optim: OptimConfig = Field(default_factory=OptimConfig)
    lambda_distil: float = 0.5
    mixed_scale: float = 0.5  # weight of the pair whose teacher view is the mixed one
    aug_beta: float = 0.4  # x_aug = beta * aug(x) + (1 - beta) * x
    distil: bool = True  # ablation: False -> plain CE on both views, no teacher
    mix: bool = True  # ablation: False -> second view is the photometric view only (no translator)
    ema_max: float = 0.999
    teacher_bf16: bool = False  # teacher forward under bf16 autocast (measured 30x slower on this CPU build)


def _selftrain_default() -> DistilConfig:
    return DistilConfig(lambda_distil=0.25, aug_beta=0.3)


class PseudoLabelConfig(_Strict):
    """Offline pseudo-labels: multi-scale max-fused logits, argmax, PNG files."""

    scales: tuple[float, ...] = (1.0, 0.5)
    batch_size: int = 4


class SelectionConfig(_Strict):
    """Which target pixels self-training learns from: bilateral consensus (default) or a fixed threshold."""

    kind: str = Field("consensus", pattern="^(consensus|threshold|none)$")
    threshold: float = 0.9  # only for kind=threshold: keep pixels with max prob >= threshold
    centroid_momentum: float = 1e-4
    centroid_min_pixels: int = 1  # a sample updates a class centroid only with at least this many pixels
    online_centroids: bool = True


class AdaptConfig(_Strict):
    """The whole DiGA pipeline: translator -> warm-up -> pseudo-labels -> centroids -> self-training -> rounds."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    source: str = "synthetic:source@train"
    target: str | None = "synthetic:target@train"  # None: no target images (domain generalisation)
    target_val: str = "synthetic:target@val"
    source_val: str | None = "synthetic:source@val"
    init_checkpoint: str | None = None  # warm-up starts here; None -> a source-only stage is trained first
    source_only: TrainConfig | None = None  # settings of that source-only stage (data/model filled in)
    translator: TranslatorConfig = Field(default_factory=TranslatorConfig)
    warmup: DistilConfig = Field(default_factory=DistilConfig)
    pseudo: PseudoLabelConfig = Field(default_factory=PseudoLabelConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    selftrain: DistilConfig = Field(default_factory=_selftrain_default)
    rounds: int = 1  # extra refinement rounds (pseudo-labels -> centroids -> self-training again)
    crop: tuple[int, int] = (128, 256)
    scale: tuple[float, float] = (0.75, 1.25)
    seed: int = 0
    checkpoint_every: int = 50
    select_best: bool = False  # choose a stage's checkpoint by target-val mIoU (uses target labels!)
    snapshot_every: int = 100  # with select_best: evaluate a snapshot every N steps
    device: str = "cpu"


# ---- the method's two other uses: domain generalisation and semi-supervised segmentation ----

class DGConfig(_Strict):
    """Domain generalisation: a source-only model, then the DG stage from it: the warm-up's symmetric
    distillation between a clean and a photometric view of the source (no mixture, no target image)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    source: str = "synthetic:source@train"
    eval: list[str] = Field(default_factory=lambda: ["synthetic:source@val", "synthetic:target@val"])
    source_only: TrainConfig = Field(default_factory=lambda: TrainConfig(val_data=[]))  # its schedule
    dg: DistilConfig = Field(default_factory=lambda: DistilConfig(mix=False))  # steps, lambda_distil, aug_beta, ...
    crop: tuple[int, int] = (128, 256)
    scale: tuple[float, float] = (0.75, 1.25)
    seed: int = 0
    checkpoint_every: int = 50
    device: str = "cpu"


def _semi_adapt_default() -> AdaptConfig:
    # one domain: the warm-up's second view is the photometric one (nothing to translate); no source-val
    return AdaptConfig(source_val=None, warmup=DistilConfig(mix=False))


class SemiConfig(_Strict):
    """Semi-supervised segmentation: a labelled share of one dataset takes the source's place in the
    DiGA pipeline, the unlabelled rest is its target."""

    target: str = "synthetic:target@train"
    target_val: str = "synthetic:target@val"
    labelled_fraction: float | None = 0.125  # chosen by split_seed; ignored when labelled_list is given
    labelled_list: str | None = None  # the authors' list format: one image path (or its tail) per line
    split_seed: int = 0
    supervised: TrainConfig = Field(default_factory=lambda: TrainConfig(val_data=[]))  # the baseline stage
    adapt: AdaptConfig = Field(default_factory=_semi_adapt_default)  # model, warm-up, self-training, rounds
