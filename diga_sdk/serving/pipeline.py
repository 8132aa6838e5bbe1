"""The request pipeline around the model call, shared by the HTTP service and in-process use:
decode + resize to the model's input before the call, resize back + encode after it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .codecs import (
    OUTPUT_FORMATS,
    RequestError,
    decode_image,
    encode_png,
    label_json,
    overlay,
    resize_image,
    resize_labels,
)

MEDIA_TYPES = {"png": "image/png", "overlay": "image/png", "json": "application/json"}


@dataclass(frozen=True)
class Prepared:
    """One decoded request: the RGB image at its own size and the copy resized to the model's input."""

    image: np.ndarray  # (H,W,3) uint8, original size
    model_input: np.ndarray  # (h,w,3) uint8, the model's input size


def prepare(data: bytes, input_size: tuple[int, int], max_pixels: int) -> Prepared:
    """Encoded bytes -> decoded RGB + the model-size copy (400/413/415 RequestError on bad input)."""
    image = decode_image(data, max_pixels)
    return Prepared(image, resize_image(image, input_size))


def check_format(fmt: str, alpha: float = 0.5) -> None:
    """A clear 400 for an unknown output format or an overlay opacity outside [0, 1]."""
    if fmt not in OUTPUT_FORMATS:
        raise RequestError(f"unknown format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    if not 0.0 <= alpha <= 1.0:
        raise RequestError(f"alpha {alpha} is outside [0, 1]")


def render(prepared: Prepared, labels: np.ndarray, fmt: str, meta: dict[str, Any], rle: bool = False,
           alpha: float = 0.5) -> tuple[bytes, str]:
    """Model-size labels -> labels at the image's size (nearest) -> the chosen encoding + its media type."""
    import json

    h, w = prepared.image.shape[:2]
    full = resize_labels(np.asarray(labels, np.uint8), (h, w))
    if fmt == "png":
        return encode_png(full), MEDIA_TYPES[fmt]
    if fmt == "overlay":
        return encode_png(overlay(prepared.image, full, meta["palette"], alpha)), MEDIA_TYPES[fmt]
    body = label_json(full, meta["class_names"], rle=rle, model_name=meta.get("model_name"),
                      model_hash=meta.get("model_hash"))
    return json.dumps(body).encode(), MEDIA_TYPES[fmt]


def segment_bytes(data: bytes, predict: Callable[[np.ndarray], np.ndarray], meta: dict[str, Any], fmt: str = "png",
                  rle: bool = False, alpha: float = 0.5, max_pixels: int = 40_000_000) -> tuple[bytes, str]:
    """The whole request in-process: what POST /segment answers, with `predict` = a runtime's predict."""
    check_format(fmt, alpha)
    prepared = prepare(data, tuple(meta["input_size"]), max_pixels)
    labels = predict(prepared.model_input[None])[0]
    return render(prepared, labels, fmt, meta, rle, alpha)
