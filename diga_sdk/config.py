"""Typed configs: every hyper-parameter has one home here, read from and written to YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import DigaError
from .io import atomic_write_bytes

T = TypeVar("T", bound=BaseModel)

# constrained numbers: every count and size is checked where a config is built (YAML, CLI, code)
Count = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]


def _ordered(pair: tuple[float, float]) -> tuple[float, float]:
    if pair[0] > pair[1]:
        raise ValueError(f"the range {list(pair)} must be written low, high")
    return pair


Crop = tuple[Count, Count]  # (H, W) in pixels; the trainers also check it against the data
ScaleRange = Annotated[tuple[Positive, Positive], AfterValidator(_ordered)]


class DigaConfig(BaseModel):
    """The base of every diga config: unknown keys are errors, choices are `Literal`s, YAML in and out."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


_Strict = DigaConfig  # the name the configs in this file were written against


class ModelConfig(_Strict):
    """Which segmenter to build and with what options."""

    name: str = "light"
    num_classes: Count = 19
    options: dict[str, Any] = Field(default_factory=dict)
    backbone_weights: str | None = None  # optional ImageNet backbone (safetensors), never downloaded
    # the Cityscapes train IDs the model's outputs stand for, in order (None: all 19); SYNTHIA's
    # 16-class head leaves out terrain, truck and train, which its labels never show
    classes: list[int] | None = None
    # recompute each backbone block in the backward pass (DeepLabV2 at the authors' crops: ~30 GB of
    # activations per step otherwise); training only, the weights and outputs are the same
    activation_checkpointing: bool = False

    @model_validator(mode="after")
    def _classes_fit(self) -> ModelConfig:
        if self.classes is not None:
            if len(self.classes) != self.num_classes:
                raise ValueError(f"model.classes lists {len(self.classes)} train IDs for num_classes={self.num_classes}")
            if len(set(self.classes)) != len(self.classes) or not all(0 <= c < 19 for c in self.classes):
                raise ValueError("model.classes must be distinct Cityscapes train IDs in 0..18")
        elif self.num_classes != 19:
            raise ValueError(f"num_classes={self.num_classes} needs model.classes: the train IDs its outputs stand for")
        return self


class ViewConfig(_Strict):
    """How each image of a training batch becomes a crop. `sizes` gives per batch slot the (H, W) the
    image is rescaled to first, or null for its stored size; a batch that is a multiple of its length
    repeats it."""

    sizes: list[Crop | None] | None = None
    scale: ScaleRange | None = None  # random rescale factor range; None: the run's `scale`
    per_axis: bool = False  # draw the rescale factor for height and width independently


class DataConfig(_Strict):
    """How training data is read: worker processes, an optional decoded-sample cache, strictness."""

    workers: int | None = Field(None, ge=0)  # None: the cores, at most 4; 0: decode in the training process
    cache_mb: int = Field(0, ge=0)  # per process; 0 keeps memory flat whatever the dataset's size
    strict: bool = False  # refuse images without a label file instead of skipping them


class EvalConfig(_Strict):
    """How stages are evaluated: scales whose upsampled logits are max-fused (the authors report 1.0 + 0.5)."""

    scales: tuple[float, ...] = (1.0,)


class OptimConfig(_Strict):
    """SGD with momentum and a polynomial learning-rate decay, as in DeepLab training."""

    lr: Positive = 0.01
    momentum: Fraction = 0.9
    weight_decay: Annotated[float, Field(ge=0.0)] = 5e-4
    poly_power: Annotated[float, Field(ge=0.0)] = 0.9
    head_lr_mult: Positive = 1.0  # learning-rate multiplier of the head
    # what the multiplier covers: the final classifier, or the model's whole decoder head (the authors'
    # DeepLabV2 recipe: ASPP, SE, fuse conv and classifier at 10x)
    head_scope: Literal["classifier", "head"] = "classifier"


class TrainConfig(_Strict):
    """Supervised training (source-only baseline, or the target oracle).

    `val_data` left unset derives from `train_data`: the embedded benchmark's two val splits for the
    benchmark, the `@val` split of a Cityscapes-layout set, nothing for other user data."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train_data: str = "synthetic:source@train"
    val_data: list[str] = Field(default_factory=list)
    steps: Count = 500
    batch_size: Count = 4
    crop: Crop = (128, 256)
    scale: ScaleRange = (0.75, 1.25)
    view: ViewConfig = Field(default_factory=ViewConfig)
    seg_loss: Literal["ce", "ohem"] = "ce"
    data: DataConfig = Field(default_factory=DataConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    seed: int = 0
    checkpoint_every: Count = 100
    device: str = "cpu"
    init_checkpoint: str | None = None  # start from this checkpoint's weights (its model) instead of a fresh model

    @model_validator(mode="after")
    def _derive_val(self) -> TrainConfig:
        if "val_data" not in self.model_fields_set:
            if is_benchmark_spec(self.train_data):
                self.val_data = ["synthetic:source@val", "synthetic:target@val"]
            else:
                self.val_data = [v] if (v := val_split_of(self.train_data)) else []
        return self


def is_benchmark_spec(spec: str | None) -> bool:
    """Whether a dataset spec names the embedded synthetic benchmark."""
    return spec is not None and spec.partition(":")[0] == "synthetic"


def val_split_of(spec: str) -> str | None:
    """`cityscapes:PATH@train` -> `cityscapes:PATH@val` (kinds with official val splits); else None."""
    kind, _, rest = spec.partition(":")
    if kind not in ("cityscapes", "synthetic"):
        return None
    path, at, split = rest.rpartition("@")
    if not at or split not in ("train", "val", "test"):  # only a trailing @split counts (a path may hold '@')
        path, split = rest, "train"
    return None if split == "val" else f"{kind}:{path}@val"


def load_config(path: str | Path | None, cls: type[T], overrides: dict[str, Any] | None = None,
                preset: str | None = None, sets: list[str] | None = None) -> T:
    """Build `cls` from, in rising priority: its defaults, a preset, a YAML file, dotted-key overrides (the
    command's options; None values skipped) and `--set key=value` strings (values parsed as YAML)."""
    data: dict[str, Any] = {}
    if preset is not None:
        from .presets import preset_config

        data = preset_config(preset, {"TrainConfig": "train", "DGConfig": "dg"}.get(cls.__name__, "adapt"))
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise DigaError(f"config file {p} not found")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise DigaError(f"config file {p} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise DigaError(f"config file {p} must hold a mapping of settings")
        data = _deep_merge(data, loaded)
    for key, value in {**(overrides or {}), **parse_sets(sets or [])}.items():
        if value is not None:
            _set_dotted(data, key, value)
    return _validate(cls, data)


def with_sets(cfg: T, sets: list[str]) -> T:
    """`cfg` with `--set key=value` strings applied on top (dotted keys, values parsed as YAML)."""
    data = cfg.model_dump()
    for key, value in parse_sets(sets).items():
        _set_dotted(data, key, value)
    return _validate(type(cfg), data)


def settings_of(cfg: BaseModel, sets: list[str]) -> list[str]:
    """The `key=value` strings of `cfg`'s own values for the keys of `sets` (what a switch was compared against)."""
    out = []
    for key in parse_sets(sets):
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part)
        out.append(f"{key}={str(node).lower() if isinstance(node, bool) else node}")
    return out


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def _validate(cls: type[T], data: dict[str, Any]) -> T:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise DigaError(f"bad config value {where!r}: {first['msg']}") from None


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`["warmup.steps=2", "eval.scales=[1.0, 0.5]"]` -> {"warmup.steps": 2, "eval.scales": [1.0, 0.5]}."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise DigaError(f"--set {item!r} is not key=value; write e.g. --set warmup.steps=2")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise DigaError(f"--set {item!r}: the value is not valid YAML ({exc})") from None
    return out


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: BaseModel, path: str | Path) -> None:
    atomic_write_bytes(path, config_to_yaml(cfg).encode())


# ---- DiGA adaptation (issue 3): every hyper-parameter of the pipeline has its home here ----

class TranslatorConfig(_Strict):
    """Source->target image translator: `fourier` (low-frequency amplitude swap) or `learned` (CycleGAN-style)."""

    kind: Literal["fourier", "learned"] = "fourier"
    # side of the swapped low-frequency square, as a fraction of min(H, W)
    fourier_window: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05
    checkpoint: str | None = None  # a learned translator written by `diga adapt translator`
    steps: Count = 2000
    batch_size: Count = 2
    lr: Positive = 2e-4
    width: Count = 32
    res_blocks: Annotated[int, Field(ge=0)] = 4
    disc_scales: Count = 2
    lambda_cycle: float = 10.0
    lambda_recon: float = 5.0
    lambda_edge: float = 1.0
    lambda_perceptual: float = 1.0
    vgg_weights: str | None = None  # VGG16 (torchvision names, safetensors): enables the perceptual loss


class DistilConfig(_Strict):
    """One DiGA training stage (warm-up or self-training): steps, views and loss weights."""

    steps: Count = 300
    batch_size: Count = 4
    source_view: ViewConfig = Field(default_factory=ViewConfig)
    target_view: ViewConfig = Field(default_factory=ViewConfig)
    # a no-grad train-mode forward of the student on the target crops each step, so BatchNorm's running
    # statistics follow the target (the authors' warm-up does this)
    target_bn: bool = False
    # self-training's ClassMix images: in the student's forward with the two source views ("joint"),
    # or as a forward of their own ("separate", as the authors' code does)
    mix_forward: Literal["joint", "separate"] = "joint"
    optim: OptimConfig = Field(default_factory=OptimConfig)
    lambda_distil: Annotated[float, Field(ge=0.0)] = 0.5
    mixed_scale: Annotated[float, Field(ge=0.0)] = 0.5  # weight of the pair whose teacher view is the mixed one
    aug_beta: Fraction = 0.4  # x_aug = beta * aug(x) + (1 - beta) * x
    distil: bool = True  # ablation: False -> plain CE on both views, no teacher
    mix: bool = True  # ablation: False -> second view is the photometric view only (no translator)
    ema_max: Fraction = 0.999
    teacher_bf16: bool = False  # teacher forward under bf16 autocast (measured 30x slower on this CPU build)


# The defaults of the authors' method switches follow `make ablation` (benchmarks/results/ablation_results.json,
# a row flipping each): target BN statistics in warm-up and in self-training, the ClassMix batch in the joint
# forward and the authors' centroids; the presets use the authors' values throughout. Self-training's target BN
# pass is the SDK's own: without it BatchNorm's running statistics follow the source and ClassMix crops the
# student trains on, not the target it is evaluated on (docs/models.md: chosen on the benchmark, judged on camera2).
def _warmup_default() -> DistilConfig:
    return DistilConfig(target_bn=True)


def _selftrain_default() -> DistilConfig:
    return DistilConfig(lambda_distil=0.25, aug_beta=0.3, target_bn=True)


class PseudoLabelConfig(_Strict):
    """Offline pseudo-labels: multi-scale max-fused logits, argmax, PNG files."""

    scales: Annotated[tuple[Positive, ...], Field(min_length=1)] = (1.0, 0.5)
    batch_size: Count = 4


class SelectionConfig(_Strict):
    """Which target pixels self-training learns from: bilateral consensus (default) or a fixed threshold."""

    kind: Literal["consensus", "threshold", "none"] = "consensus"
    threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9  # kind=threshold: keep pixels with max prob >= it
    centroid_momentum: Fraction = 1e-4
    centroid_min_pixels: Count = 5  # a sample updates a class centroid only with at least this many pixels
    online_centroids: bool = True
    # which target labels the online update averages: the stored pseudo-labels ("pseudo") or those kept
    # by the consensus ("consensus", as the authors' code does); both also agree with the teacher's argmax
    centroid_labels: Literal["pseudo", "consensus"] = "consensus"
    # initial centroids: mean over every pixel of a class ("pixel") or mean of per-image class means
    # ("image", each image with >= centroid_min_pixels pixels of the class counting once, as the authors')
    centroid_init: Literal["pixel", "image"] = "image"


class AdaptConfig(_Strict):
    """The whole DiGA pipeline: translator -> warm-up -> pseudo-labels -> centroids -> self-training -> rounds.

    With neither `source` nor `target` given, the run uses the embedded benchmark and its val splits.
    Once the user names their data, the evaluation sets left unset derive from it: target-val is the
    target's `@val` split where its layout has one (else no target evaluation), source-val is off."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    source: str = "synthetic:source@train"
    target: str | None = "synthetic:target@train"  # None: no target images (domain generalisation)
    target_val: str | None = "synthetic:target@val"
    source_val: str | None = "synthetic:source@val"
    data: DataConfig = Field(default_factory=DataConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    seg_loss: Literal["ce", "ohem"] = "ce"
    init_checkpoint: str | None = None  # warm-up starts here; None -> see warmup_init
    # without init_checkpoint: train a source-only stage first ("source_only"), or start warm-up from the
    # freshly built model and its model.backbone_weights ("backbone", the authors' recipe)
    warmup_init: Literal["source_only", "backbone"] = "source_only"
    source_only: TrainConfig | None = None  # settings of that source-only stage (data/model filled in)
    translator: TranslatorConfig = Field(default_factory=TranslatorConfig)
    warmup: DistilConfig = Field(default_factory=_warmup_default)
    pseudo: PseudoLabelConfig = Field(default_factory=PseudoLabelConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    selftrain: DistilConfig = Field(default_factory=_selftrain_default)
    rounds: Annotated[int, Field(ge=0)] = 1  # extra refinement rounds (pseudo-labels -> centroids -> self-training)
    # after each warm-up and self-training stage, re-estimate BatchNorm's running statistics on the unlabelled
    # target-train frames at their stored size ("target", AdaBN) before the stage hands its checkpoint on
    # (adapt/bn_recalibration.py); "off" keeps the statistics training left. Default "target": training moves
    # them towards the small source/mixed crops, while the model labels whole target frames (docs/models.md)
    bn_recalibration: Literal["off", "target"] = "target"
    crop: Crop = (128, 256)
    scale: ScaleRange = (0.75, 1.25)
    seed: int = 0
    checkpoint_every: Count = 50
    select_best: bool = False  # choose a stage's checkpoint by target-val mIoU (uses target labels!)
    snapshot_every: Count = 100  # with select_best: evaluate a snapshot every N steps
    device: str = "cpu"

    @model_validator(mode="after")
    def _derive_eval_sets(self) -> AdaptConfig:
        user_data = not (is_benchmark_spec(self.source) and (self.target is None or is_benchmark_spec(self.target)))
        if user_data:
            if "target_val" not in self.model_fields_set:
                self.target_val = val_split_of(self.target) if self.target else None
            if "source_val" not in self.model_fields_set:
                self.source_val = None
        return self

    def eval_sets(self) -> list[str]:
        """The labelled sets every stage is evaluated on (target-val first)."""
        return [s for s in (self.target_val, self.source_val) if s]


# ---- the method's two other uses: domain generalisation and semi-supervised segmentation ----

class DGConfig(_Strict):
    """Domain generalisation: a source-only model, then the DG stage from it: the warm-up's symmetric
    distillation between a clean and a photometric view of the source (no mixture, no target image)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    source: str = "synthetic:source@train"
    eval: list[str] = Field(default_factory=lambda: ["synthetic:source@val", "synthetic:target@val"])
    source_only: TrainConfig = Field(default_factory=lambda: TrainConfig(val_data=[]))  # its schedule
    dg: DistilConfig = Field(default_factory=lambda: DistilConfig(mix=False))  # steps, lambda_distil, aug_beta, ...
    # where the DG stage starts: the source-only model ("source_only"), or the freshly built model with its
    # model.backbone_weights ("backbone", the authors' recipe: ImageNet weights, source-only kept as the baseline)
    dg_init: Literal["source_only", "backbone"] = "source_only"
    # a trained source model: the DG stage starts from it and it is the baseline (stage "init"), no source-only
    # training runs (`Segmenter.adapt(mode="dg")` passes its checkpoint here)
    init_checkpoint: str | None = None
    eval_scales: Annotated[tuple[Positive, ...], Field(min_length=1)] = (1.0,)  # max-fused, as EvalConfig.scales
    crop: Crop = (128, 256)
    scale: ScaleRange = (0.75, 1.25)
    seed: int = 0
    checkpoint_every: Count = 50
    data: DataConfig = Field(default_factory=DataConfig)  # loader workers, strictness (both stages)
    device: str = "cpu"


# The authors' semi-supervised scripts (fy-vision/DiGA, semi-supervised_segmentation) train self-training
# with the warm-up's loss weights (lambda 0.5, beta 0.4) and for as many steps as the warm-up, where their
# domain-adaptation self-training uses lambda 0.25, beta 0.3.
SEMI_LAMBDA_DISTIL, SEMI_AUG_BETA = 0.5, 0.4


def semi_selftrain(warmup: DistilConfig, **update: object) -> DistilConfig:
    """The semi-supervised self-training stage of a warm-up: the same steps, lambda and beta (the authors') and
    the same target BN pass (as adaptation's self-training; chosen on the selection split, docs/modes.md)."""
    return DistilConfig(steps=warmup.steps, batch_size=warmup.batch_size, optim=warmup.optim,
                        lambda_distil=SEMI_LAMBDA_DISTIL, aug_beta=SEMI_AUG_BETA,
                        target_bn=warmup.target_bn).model_copy(update=update)


def _semi_adapt_default() -> AdaptConfig:
    # one domain: the warm-up's second view is the photometric one (nothing to translate); no source-val
    warmup = DistilConfig(mix=False, target_bn=True, lambda_distil=SEMI_LAMBDA_DISTIL, aug_beta=SEMI_AUG_BETA)
    return AdaptConfig(source_val=None, warmup=warmup, selftrain=semi_selftrain(warmup))


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
