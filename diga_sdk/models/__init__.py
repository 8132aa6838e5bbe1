"""Segmenters (DeepLabV2-ResNet101, a light on-device model), the registry and checkpoint I/O."""

from .checkpoint import ModelMeta, checkpoint_hash, load_checkpoint, read_meta, save_checkpoint
from .registry import available_models, build_model, register

__all__ = ["ModelMeta", "available_models", "build_model", "checkpoint_hash", "load_checkpoint", "read_meta",
           "register", "save_checkpoint"]
