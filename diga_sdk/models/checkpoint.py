"""Safe checkpoint I/O: one safetensors file holding the weights and, in its header, the JSON
metadata needed to rebuild the model (name, classes, palette, normalisation, input size)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..data.labels import CLASS_NAMES, PALETTE
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import DigaError
from ..io import atomic_path, file_sha256
from .registry import build_model
from .reparam import fold_reparam, has_reparam, is_folded_state

META_KEY = "diga_meta"


class ModelMeta(BaseModel):
    """What a deployed model must carry with it."""

    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    num_classes: int = 19
    model_options: dict[str, Any] = Field(default_factory=dict)
    class_names: list[str] = Field(default_factory=lambda: list(CLASS_NAMES))
    palette: list[list[int]] = Field(default_factory=lambda: PALETTE.tolist())
    mean: list[float] = Field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = Field(default_factory=lambda: list(IMAGENET_STD))
    input_size: list[int] = Field(default_factory=lambda: [256, 512])  # (H, W) it was trained at
    sdk_version: str = ""
    stage: str = ""  # which training stage produced it (source_only, warmup, selftrain, ...)
    # the Cityscapes train IDs its outputs stand for, in order (None: output c is train ID c)
    classes: list[int] | None = None
    # the dataset specs it was trained on ({"source": ..., "target": ..., "target_val": ...}): export and
    # evaluation defaults derive from them, never from the embedded benchmark unless it was trained there
    data: dict[str, str | None] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)

    def output_train_ids(self) -> list[int]:
        """Train ID of each output channel."""
        return list(self.classes) if self.classes is not None else list(range(self.num_classes))


def save_checkpoint(model: nn.Module, path: str | Path, meta: ModelMeta) -> Path:
    """Write the model's state dict + metadata to `path` atomically."""
    from .._version import __version__

    meta = meta.model_copy(update={"sdk_version": __version__})
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={META_KEY: meta.model_dump_json()})
    return Path(path)


def read_meta(path: str | Path) -> ModelMeta:
    """The metadata of a checkpoint without loading its tensors."""
    p = _check_file(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise DigaError(f"checkpoint {p} is corrupt or not a safetensors file ({exc}); re-export or re-train it") from None
    if raw is None:
        raise DigaError(f"{p} is a safetensors file without diga metadata; save it with diga_sdk.save_checkpoint")
    try:
        return ModelMeta.model_validate(json.loads(raw))
    except (ValueError, TypeError) as exc:
        raise DigaError(f"checkpoint {p} has unreadable metadata: {exc}") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    fold: bool = False) -> tuple[nn.Module, ModelMeta]:
    """Rebuild the model from a checkpoint; returns (model in eval mode, metadata). `fold=True` gives the
    deployed form (training-only re-parameterised branches folded: same outputs, fewer convolutions) for
    inference, export and on-device adaptation; training stages load the form they train."""
    p = _check_file(path)
    meta = read_meta(p)
    model = build_model(meta.model_name, meta.num_classes, **meta.model_options)
    try:
        state = load_file(str(p), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DigaError(f"checkpoint {p} is corrupt ({exc}); re-export or re-train it") from None
    try:
        load_weights(model, state)
    except RuntimeError as exc:
        raise DigaError(f"checkpoint {p} does not fit model {meta.model_name!r}: {str(exc).splitlines()[0]}") from None
    if fold:
        fold_reparam(model)
    model.to(device).eval()
    model.diga_meta = meta  # type: ignore[attr-defined]
    return model, meta


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """`model.load_state_dict(state)`, folding the model's re-parameterised branches first when `state`
    was saved folded (an exported or on-device-adapted model, or one trained before the branches)."""
    if has_reparam(model) and is_folded_state(state):
        fold_reparam(model)
    model.load_state_dict(state)
    return model


def checkpoint_hash(path: str | Path) -> str:
    """Short content hash of a checkpoint file (first 16 hex digits of SHA-256)."""
    return file_sha256(path)[:16]


def _check_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DigaError(f"checkpoint {p} not found; pass the path of a .safetensors checkpoint written by diga")
    return p
