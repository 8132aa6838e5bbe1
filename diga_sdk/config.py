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
    scale: tuple[float, float] = (0.5, 1.0)
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
