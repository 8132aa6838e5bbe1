"""diga-sdk: adapt a driving-scene segmenter to a new camera domain with DiGA, then export, serve
and adapt it on-device. Importing this package loads no optional extra (onnx, bentoml, triton, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__

if TYPE_CHECKING:
    import torch.nn as nn


def load_model(path: str, device: str = "cpu") -> nn.Module:
    """Load a diga checkpoint (.safetensors) as a model in eval mode; its metadata is `model.diga_meta`."""
    from .models.checkpoint import load_checkpoint

    return load_checkpoint(path, device)[0]


__all__ = ["__version__", "load_model"]
