"""The strong photometric view: x_aug = beta*aug(x) + (1-beta)*x, aug = kornia colour jitter,
random grayscale, gaussian blur and sharpness (the research code's recipe)."""

from __future__ import annotations

import torch
import torch.nn as nn


def build_photometric_aug() -> nn.Module:
    """Colour jitter (.4,.4,.2,.1; p=.5), grayscale (p=.3), 3x3 gaussian blur (p=.8), sharpness (p=.3)."""
    import kornia.augmentation as K

    return K.AugmentationSequential(
        K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.5),
        K.RandomGrayscale(p=0.3),
        K.RandomGaussianBlur((3, 3), (0.1, 2.0), p=0.8),
        K.RandomSharpness(0.5, p=0.3),
    )


class StrongView:
    """Draws the strong view of a (B,3,H,W) batch in [0,1]; reproducible from an integer seed."""

    def __init__(self) -> None:
        self.aug = build_photometric_aug()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, beta: float, seed: int) -> torch.Tensor:
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # kornia draws from the global RNG
            torch.manual_seed(seed)
            augmented = self.aug(x).clamp_(0.0, 1.0)
        return beta * augmented + (1.0 - beta) * x
