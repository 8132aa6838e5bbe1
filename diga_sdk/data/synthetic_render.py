"""Appearance of the two synthetic domains, rendered from one scene's label/instance/part maps.

Source ("GTA-like"): flat saturated per-class colours, per-instance variation, sharp edges,
uniform light. Target ("Cityscapes-like"): another colour distribution, textures, lighting
gradients and shadows, white-balance drift, blur, sensor noise and vignetting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .labels import NAME_TO_ID
from .synthetic_scene import PART_LAMP, PART_MARKING, PART_WHEEL, PART_WINDOW, Scene

# Base RGB colours per Cityscapes label ID. Source: saturated game-like; target: muted, natural.
_SOURCE_BASE = {
    "road": (120, 90, 130), "sidewalk": (215, 120, 200), "building": (150, 110, 80), "wall": (170, 160, 110),
    "fence": (200, 150, 120), "pole": (140, 140, 170), "traffic light": (240, 180, 30),
    "traffic sign": (235, 230, 20), "vegetation": (60, 190, 40), "terrain": (170, 230, 110),
    "sky": (80, 170, 250), "person": (230, 40, 70), "rider": (250, 60, 20), "car": (30, 40, 200),
    "truck": (40, 60, 120), "bus": (20, 120, 150), "bicycle": (150, 30, 60), "ego vehicle": (20, 20, 20),
}
_TARGET_BASE = {
    "road": (105, 100, 100), "sidewalk": (150, 135, 135), "building": (125, 120, 110), "wall": (140, 135, 120),
    "fence": (120, 110, 95), "pole": (110, 110, 105), "traffic light": (60, 60, 50),
    "traffic sign": (170, 160, 90), "vegetation": (85, 110, 55), "terrain": (120, 135, 80),
    "sky": (190, 200, 210), "person": (110, 70, 80), "rider": (120, 75, 60), "car": (90, 95, 120),
    "truck": (95, 100, 95), "bus": (140, 130, 80), "bicycle": (70, 45, 55), "ego vehicle": (40, 40, 45),
}


def _lut(table: dict[str, tuple[int, int, int]]) -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.float32)
    for name, rgb in table.items():
        lut[NAME_TO_ID[name]] = rgb
    return lut


@dataclass(frozen=True)
class RenderStyle:
    """Photometric appearance of one domain."""

    base: np.ndarray  # (256,3) colour per label ID
    instance_jitter: float  # std of per-instance colour offsets
    texture: float  # amplitude of multiplicative texture noise
    exposure: tuple[float, float]
    gradient: float  # amplitude of a smooth lighting gradient
    shadows: float  # expected number of cast-shadow regions
    white_balance: float  # std of per-channel gains
    blur_sigma: tuple[float, float]
    noise_sigma: tuple[float, float]
    vignette: float


SOURCE_RENDER = RenderStyle(
    base=_lut(_SOURCE_BASE), instance_jitter=22.0, texture=0.0, exposure=(0.95, 1.05), gradient=0.0,
    shadows=0.0, white_balance=0.0, blur_sigma=(0.0, 0.0), noise_sigma=(1.0, 2.0), vignette=0.0,
)
# The target's colours lie between the source palette and a natural one: colour cues transfer
# partly, as between GTA5 and Cityscapes. TARGET_PALETTE_MIX is the calibrated share (frozen).
TARGET_PALETTE_MIX = 0.3
TARGET_RENDER = RenderStyle(
    base=(1 - TARGET_PALETTE_MIX) * _lut(_SOURCE_BASE) + TARGET_PALETTE_MIX * _lut(_TARGET_BASE), instance_jitter=14.0, texture=0.18, exposure=(0.6, 1.05), gradient=0.25,
    shadows=2.0, white_balance=0.06, blur_sigma=(0.6, 1.2), noise_sigma=(3.0, 7.0), vignette=0.25,
)

_PART_FACTOR = np.zeros(8, dtype=np.float32)
_PART_FACTOR[:] = 1.0
_PART_FACTOR[PART_WINDOW] = 0.45
_PART_FACTOR[PART_WHEEL] = 0.2
_PART_FACTOR[PART_LAMP] = 1.5
_PART_FACTOR[PART_MARKING] = 2.0


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth random field in [-1, 1] (bilinear upsampling of a coarse grid)."""
    gh, gw = max(h // cell, 1) + 1, max(w // cell, 1) + 1
    coarse = torch.from_numpy(rng.uniform(-1, 1, size=(1, 1, gh, gw)).astype(np.float32))
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)[0, 0].numpy()


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return img
    r = max(int(np.ceil(2.5 * sigma)), 1)
    x = np.arange(-r, r + 1, dtype=np.float32)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k = torch.from_numpy(k / k.sum())
    t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[:, None]  # (3,1,H,W)
    t = F.conv2d(F.pad(t, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    t = F.conv2d(F.pad(t, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return t[:, 0].numpy().transpose(1, 2, 0)


def render(scene: Scene, style: RenderStyle, rng: np.random.Generator) -> np.ndarray:
    """Render `scene` in `style` to an (H,W,3) uint8 RGB image."""
    label, inst, part = scene.label, scene.instance, scene.part
    h, w = label.shape
    img = style.base[label].copy()  # (H,W,3)
    # Per-instance colour variation (one offset per instance id, looked up per pixel).
    n_inst = int(inst.max()) + 1
    offsets = rng.normal(0.0, style.instance_jitter, size=(n_inst, 3)).astype(np.float32)
    offsets[0] = rng.normal(0.0, style.instance_jitter / 3, size=3)
    img += offsets[inst]
    img *= _PART_FACTOR[part][..., None]
    ys = np.arange(h, dtype=np.float32)[:, None]
    if style.texture > 0:
        fine = _smooth_noise(rng, h, w, 3)
        coarse = _smooth_noise(rng, h, w, 24)
        img *= (1.0 + style.texture * (0.6 * fine + 0.4 * coarse))[..., None]
        sky = label == NAME_TO_ID["sky"]
        img[sky] = (style.base[NAME_TO_ID["sky"]] * (0.85 + 0.3 * (ys / h)).repeat(w, 1)[sky][:, None]).clip(0, 255)
    light = np.full((h, w), _rng_u(rng, style.exposure), dtype=np.float32)
    if style.gradient > 0:
        light *= 1.0 + style.gradient * _smooth_noise(rng, h, w, max(h, w) // 2)
    for _ in range(rng.poisson(style.shadows)):
        # A cast shadow: a slanted band below the horizon darkening everything it covers.
        x0 = rng.uniform(-0.3, 1.0) * w
        width = rng.uniform(0.1, 0.5) * w
        slope = rng.uniform(-1.5, 1.5)
        xs = np.arange(w, dtype=np.float32)[None, :]
        band = (xs - x0 - slope * (ys - scene.horizon) >= 0) & (xs - x0 - slope * (ys - scene.horizon) < width)
        band &= ys > scene.horizon
        light = np.where(band, light * rng.uniform(0.45, 0.7), light)
    img *= light[..., None]
    if style.white_balance > 0:
        img *= (1.0 + rng.normal(0.0, style.white_balance, size=3)).astype(np.float32)
    if style.vignette > 0:
        yy = (ys / h - 0.5) * 2
        xx = (np.arange(w, dtype=np.float32)[None, :] / w - 0.5) * 2
        img *= (1.0 - style.vignette * 0.5 * (xx**2 + yy**2))[..., None]
    img = _gaussian_blur(img, _rng_u(rng, style.blur_sigma))
    img += rng.normal(0.0, _rng_u(rng, style.noise_sigma), size=img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _rng_u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi)) if lo_hi[1] > lo_hi[0] else float(lo_hi[0])
