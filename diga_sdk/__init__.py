"""diga-sdk: adapt a driving-scene segmenter to a new camera domain with DiGA, then export, serve
and adapt it on-device. Importing this package loads no optional extra (onnx, bentoml, triton, ...).

    import diga_sdk as diga
    seg = diga.Segmenter("model.safetensors")
    seg.predict("frame.png")[0].save("labels.png")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__
from .config import AdaptConfig, DigaConfig, TrainConfig
from .errors import DigaError
from .segmenter import Segmenter
from .segmenter_results import AdaptRun, EvalResult, ExportReport, LatencyReport, Prediction

if TYPE_CHECKING:
    import torch.nn as nn


def load_model(path: str, device: str = "cpu", fold: bool = False) -> nn.Module:
    """Load a diga checkpoint (.safetensors) as a PyTorch model in eval mode; its metadata is `model.diga_meta`.
    `fold=True` gives the deployed form (a model's training-only branches folded: same outputs, less work)."""
    from .models.checkpoint import load_checkpoint

    return load_checkpoint(path, device, fold=fold)[0]


__all__ = ["AdaptConfig", "AdaptRun", "DigaConfig", "DigaError", "EvalResult", "ExportReport", "LatencyReport",
           "Prediction", "Segmenter", "TrainConfig", "__version__", "load_model"]
