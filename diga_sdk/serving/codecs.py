"""Bytes in, bytes out for the serving endpoint: decode an uploaded image safely (format allow-list,
pixel limit checked from the header before decoding, every colour mode converted to RGB) and encode
a label map as a PNG label map, a colour overlay PNG or JSON (class histogram + optional COCO RLE)."""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..data.images import overlay as overlay  # the shared helpers, re-exported for the serving pipeline
from ..data.images import resize_image as resize_image
from ..data.images import resize_labels as resize_labels
from ..errors import DigaError

ALLOWED_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
OUTPUT_FORMATS = ("png", "overlay", "json")
IGNORE_LABEL = 255


DEFAULT_MAX_PIXELS = 40_000_000  # one decoded-pixel limit for `diga predict` and the server (DIGA_MAX_PIXELS)
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def max_pixels_from_env(environ: Mapping[str, str] | None = None) -> int:
    """DIGA_MAX_PIXELS if set (a positive integer), else DEFAULT_MAX_PIXELS."""
    raw = (os.environ if environ is None else environ).get("DIGA_MAX_PIXELS", "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise DigaError(f"bad DIGA_MAX_PIXELS={raw!r}; set a positive number of pixels or unset it")
    return value


def pixel_limit_message(pixels: int, max_pixels: int, size: tuple[int, int] | None = None) -> str:
    """The one wording of the pixel limit, naming the variable that sets it."""
    what = f"{size[0]}x{size[1]} = {pixels}" if size else str(pixels)
    return (f"image of {what} pixels exceeds the limit of {max_pixels} pixels (DIGA_MAX_PIXELS); "
            "downscale it or raise the limit")


def open_checked(source: Any, max_pixels: int) -> Any:
    """PIL `Image.open` of a path or file object with our pixel limit checked from the header (before
    any pixel is decoded); Pillow's own bomb error is reported with our limit too."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
    except Image.DecompressionBombError as exc:
        found = _BOMB_PIXELS.search(str(exc))
        raise RequestError(pixel_limit_message(int(found.group(1)) if found else max_pixels + 1, max_pixels),
                           413) from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise RequestError(pixel_limit_message(w * h, max_pixels, (w, h)), 413)
    return img


class RequestError(DigaError):
    """A client error with the HTTP status it maps to (400 bad input, 413 too large, 415 bad format)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Encoded PNG/JPEG/WebP bytes -> (H,W,3) uint8 RGB; EXIF orientation applied, first frame only."""
    from PIL import ImageOps, UnidentifiedImageError

    if not data:
        raise RequestError("empty request body: send one PNG, JPEG or WebP image (raw body or multipart field 'image')")
    try:
        img = open_checked(io.BytesIO(data), max_pixels)
    except RequestError:
        raise
    except UnidentifiedImageError:
        raise RequestError("the request body is not an image; send one PNG, JPEG or WebP image") from None
    except Exception as exc:  # PIL raises many types on hostile headers; none may reach the worker
        raise RequestError(f"cannot read the image header ({type(exc).__name__}); send a valid PNG, JPEG or WebP") from None
    if img.format not in ALLOWED_FORMATS:
        raise RequestError(f"image format {img.format} is not accepted; send PNG, JPEG or WebP", 415)
    w, h = img.size
    if w < 1 or h < 1:
        raise RequestError(f"image of {w}x{h} has no pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return to_rgb(img)
    except RequestError:
        raise
    except Exception as exc:  # truncated or corrupt pixel data
        raise RequestError(f"the image data is corrupt or truncated ({type(exc).__name__}: {exc}); re-encode it") from None


def to_rgb(img: Any) -> np.ndarray:
    """Any PIL mode (L, LA, P, PA, RGBA, CMYK, 1, I;16, I, F) -> (H,W,3) uint8 RGB; alpha is dropped."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float32) / 257.0  # 16-bit grey -> 8-bit
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        grey = np.clip(np.rint(np.asarray(img, np.float32)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def encode_png(array: np.ndarray) -> bytes:
    """(H,W) uint8 label map or (H,W,3) uint8 image -> PNG bytes (fast compression)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def histogram(labels: np.ndarray, class_names: list[str]) -> list[dict[str, Any]]:
    """Per-class pixel counts and fractions (every class listed, absent ones with 0)."""
    counts = np.bincount(labels.ravel(), minlength=256)
    total = max(int(labels.size), 1)
    return [{"id": i, "name": name, "pixels": int(counts[i]), "fraction": float(counts[i]) / total}
            for i, name in enumerate(class_names)]


def rle_per_class(labels: np.ndarray) -> dict[int, list[int]]:
    """COCO uncompressed RLE (column-major; counts start with a run of 0s) of every label present."""
    flat = np.asarray(labels).ravel(order="F")
    if flat.size == 0:
        return {}
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    lengths = np.diff(np.concatenate((starts, [flat.size])))
    values = flat[starts]
    order = np.argsort(values, kind="stable")  # runs grouped by label, in pixel order inside a label
    values, starts, lengths = values[order], starts[order], lengths[order]
    ends = starts + lengths
    first = np.r_[True, values[1:] != values[:-1]]
    prev_end = np.where(first, 0, np.r_[0, ends[:-1]])
    gaps = starts - prev_end  # the 0-run before each 1-run
    split = np.flatnonzero(first)[1:]  # where each label's group of runs starts
    out: dict[int, list[int]] = {}
    for v, g, lg in zip(np.split(values, split), np.split(gaps, split), np.split(lengths, split), strict=True):
        tail = flat.size - int(g.sum() + lg.sum())  # the 0-run after the label's last pixel
        counts = np.empty(2 * len(g) + (tail > 0), np.int64)
        counts[0 : 2 * len(g) : 2], counts[1 : 2 * len(g) : 2] = g, lg
        if tail > 0:
            counts[-1] = tail
        out[int(v[0])] = counts.tolist()
    return out


def label_json(labels: np.ndarray, class_names: list[str], rle: bool = False, **extra: Any) -> dict[str, Any]:
    """The JSON answer: size, class histogram and, when asked, one COCO RLE per class present."""
    h, w = labels.shape
    out: dict[str, Any] = {**extra, "height": int(h), "width": int(w), "classes": histogram(labels, class_names)}
    ignored = int(np.count_nonzero(labels == IGNORE_LABEL))
    out["ignored_pixels"] = ignored
    if rle:
        names = {i: n for i, n in enumerate(class_names)} | {IGNORE_LABEL: "ignore"}
        out["rle"] = [{"id": k, "name": names.get(k, str(k)), "size": [int(h), int(w)], "counts": v}
                      for k, v in sorted(rle_per_class(labels).items())]
    return out


def rle_decode(counts: list[int], size: tuple[int, int]) -> np.ndarray:
    """COCO uncompressed RLE -> (H,W) bool mask (the inverse of `rle_per_class`, for clients and tests)."""
    h, w = size
    vals = np.zeros(len(counts), bool)
    vals[1::2] = True
    flat = np.repeat(vals, np.asarray(counts, np.int64))
    if flat.size != h * w:
        raise DigaError(f"RLE counts sum to {flat.size}, expected {h}*{w}={h * w}")
    return flat.reshape((h, w), order="F")
