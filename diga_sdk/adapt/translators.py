"""Source->target image translators: `fourier` (no training) and `learned` (CycleGAN-style generator).

Both map (B,3,H,W) source images in [0,1] to the target's style; the cross-domain mixture pastes
their output under the classes it does not keep from the strongly augmented source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..config import TranslatorConfig
from ..errors import DigaError
from ..io import atomic_path


class Translator(Protocol):
    def __call__(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...


def low_frequency_mask(h: int, w: int, window: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H,W) bool: the centred square of side 2b+1, b = max(1, floor(min(H,W)*window)), in fftshift order."""
    b = max(1, int(min(h, w) * window))
    ys = (torch.arange(h, device=device) - h // 2).abs() <= b
    xs = (torch.arange(w, device=device) - w // 2).abs() <= b
    return ys[:, None] & xs[None, :]


@torch.no_grad()
def fourier_translate(source: torch.Tensor, target: torch.Tensor, window: float = 0.05) -> torch.Tensor:
    """Replace the low-frequency amplitude spectrum of each source image with its target image's, keep
    the source's phase; (B,3,H,W) in [0,1] -> (B,3,H,W) in [0,1]."""
    if source.shape != target.shape:
        raise DigaError(f"fourier translator needs source and target batches of one shape, got "
                        f"{tuple(source.shape)} and {tuple(target.shape)}")
    fs = torch.fft.fftshift(torch.fft.fft2(source.float()), dim=(-2, -1))
    ft = torch.fft.fftshift(torch.fft.fft2(target.float()), dim=(-2, -1))
    mask = low_frequency_mask(*source.shape[-2:], window, source.device)
    amp = torch.where(mask, ft.abs(), fs.abs())
    mixed = torch.polar(amp, fs.angle())
    out = torch.fft.ifft2(torch.fft.ifftshift(mixed, dim=(-2, -1))).real
    return out.clamp_(0.0, 1.0).to(source.dtype)


class FourierTranslator:
    def __init__(self, window: float) -> None:
        self.window = window

    def __call__(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return fourier_translate(source, target, self.window)


# ---- learned translator: ResNet generator (CycleGAN), multi-scale PatchGAN discriminators ----

def _conv_in_relu(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, padding_mode="reflect"), nn.InstanceNorm2d(cout, affine=True),
            nn.ReLU(inplace=True)]


class _ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_in_relu(c, c, 3), nn.Conv2d(c, c, 3, 1, 1, padding_mode="reflect"),
                                  nn.InstanceNorm2d(c, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Generator(nn.Module):
    """Encoder (7x7, two stride-2 convs) -> residual blocks -> decoder (two upsampling convs, 7x7, tanh)."""

    def __init__(self, width: int = 32, res_blocks: int = 4) -> None:
        super().__init__()
        w = width
        self.encoder = nn.Sequential(*_conv_in_relu(3, w, 7), *_conv_in_relu(w, 2 * w, 3, 2),
                                     *_conv_in_relu(2 * w, 4 * w, 3, 2), *[_ResBlock(4 * w) for _ in range(res_blocks)])
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), *_conv_in_relu(4 * w, 2 * w, 3),
                                     nn.Upsample(scale_factor=2, mode="nearest"), *_conv_in_relu(2 * w, w, 3),
                                     nn.Conv2d(w, 3, 7, 1, 3, padding_mode="reflect"), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[0,1] images in, [0,1] images out (sizes divisible by 4)."""
        return (self.decoder(self.encoder(x * 2.0 - 1.0)) + 1.0) * 0.5


class PatchDiscriminator(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.InstanceNorm2d(2 * w), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * w, 4 * w, 4, 1, 1), nn.InstanceNorm2d(4 * w), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4 * w, 1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2.0 - 1.0)


class MultiScaleDiscriminator(nn.Module):
    """PatchGAN discriminators on the image and its 2x, 4x, ... average-pooled copies."""

    def __init__(self, width: int = 32, scales: int = 2) -> None:
        super().__init__()
        self.discs = nn.ModuleList(PatchDiscriminator(width) for _ in range(scales))
        self.down = nn.AvgPool2d(3, 2, 1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, d in enumerate(self.discs):
            if i:
                x = self.down(x)
            outs.append(d(x))
        return outs


class LearnedTranslator:
    """Applies a trained source->target generator (no gradients)."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator.eval()

    @torch.no_grad()
    def __call__(self, source: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        h, w = source.shape[-2:]
        ph, pw = (-h) % 4, (-w) % 4
        x = nn.functional.pad(source, (0, pw, 0, ph), mode="replicate") if ph or pw else source
        return self.generator(x)[..., :h, :w].clamp(0.0, 1.0)


_META_KEY = "diga_translator"


def save_generator(gen: Generator, path: str | Path, width: int, res_blocks: int) -> Path:
    import json

    state = {k: v.detach().cpu().contiguous() for k, v in gen.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={_META_KEY: json.dumps({"width": width, "res_blocks": res_blocks})})
    return Path(path)


def load_generator(path: str | Path, device: str = "cpu") -> Generator:
    import json

    p = Path(path)
    if not p.is_file():
        raise DigaError(f"translator checkpoint {p} not found; train one with `diga adapt translator`")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[_META_KEY])
        gen = Generator(int(meta["width"]), int(meta["res_blocks"]))
        gen.load_state_dict(load_file(str(p), device=device))
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as exc:
        raise DigaError(f"translator checkpoint {p} is not a diga translator ({exc}); re-train it") from None
    return gen.to(device)


def build_translator(cfg: TranslatorConfig, device: str = "cpu") -> Translator:
    """The translator the warm-up and self-training mix with."""
    if cfg.kind == "fourier":
        return FourierTranslator(cfg.fourier_window)
    if not cfg.checkpoint:
        raise DigaError("translator.kind is 'learned' but translator.checkpoint is empty; train one with "
                        "`diga adapt translator` or set translator.kind: fourier")
    return LearnedTranslator(load_generator(cfg.checkpoint, device))
