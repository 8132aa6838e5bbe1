"""Training of the learned translator: CycleGAN-style, LSGAN multi-scale discriminators, cycle and
reconstruction L1, a semantic-edge loss (keep image edges at source class boundaries) and, only when
the user supplies VGG16 weights, a perceptual loss. Resumable like every stage."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import DataConfig, TranslatorConfig
from ..data.datasets import open_dataset
from ..data.labels import IGNORE_INDEX
from ..data.loader import BatchStream, StepBatches, default_workers
from ..data.transforms import step_rng
from ..errors import DigaError
from ..interrupt import interrupt_at_step_boundary, stopped
from ..progress import log, progress_bar
from .state import has_train_state, load_train_state, save_train_state
from .translators import Generator, MultiScaleDiscriminator, save_generator


def semantic_boundary(labels: torch.Tensor) -> torch.Tensor:
    """(B,H,W) labels -> (B,1,H,W) float mask of pixels whose 3x3 neighbourhood holds another class."""
    lab = labels.float()[:, None]
    hi = F.max_pool2d(lab, 3, 1, 1)
    lo = -F.max_pool2d(-lab, 3, 1, 1)
    return ((hi != lo) & (lab != IGNORE_INDEX)).float()


def semantic_edge_loss(translated: torch.Tensor, source: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean |sobel(gray(translated)) - sobel(gray(source))| over the source's class-boundary pixels."""
    from kornia.color import rgb_to_grayscale
    from kornia.filters import sobel

    mask = semantic_boundary(labels)
    diff = (sobel(rgb_to_grayscale(translated)) - sobel(rgb_to_grayscale(source))).abs() * mask
    return diff.sum() / mask.sum().clamp_min(1.0)


def lsgan_loss(outputs: list[torch.Tensor], real: bool) -> torch.Tensor:
    target = 1.0 if real else 0.0
    return sum(((o - target) ** 2).mean() for o in outputs) / len(outputs)


class VGGFeatures(nn.Module):
    """VGG16 `features` up to relu3_3 with torchvision's module names (for user-supplied weights)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, 1, 1), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..data.transforms import normalize

        return self.features(normalize(x))


def load_vgg(path: str, device: str) -> VGGFeatures:
    from safetensors.torch import load_file

    vgg = VGGFeatures()
    try:
        state = {k: v for k, v in load_file(path).items() if k.startswith("features.")}
        missing, _ = vgg.load_state_dict(state, strict=False)
    except Exception as exc:  # safetensors raises its own types
        raise DigaError(f"cannot read VGG weights {path}: {exc}; pass a safetensors VGG16 state dict") from None
    if missing:
        raise DigaError(f"VGG weights {path} lack {missing[:3]}; pass torchvision-named VGG16 weights")
    for p in vgg.parameters():
        p.requires_grad_(False)
    return vgg.to(device).eval()


def train_translator(cfg: TranslatorConfig, source: str, target: str, out_dir: str | Path,
                     crop: tuple[int, int] = (128, 256), scale: tuple[float, float] = (0.5, 1.0), seed: int = 0,
                     checkpoint_every: int = 100, resume: bool = False, device: str = "cpu",
                     data: DataConfig | None = None) -> Path:
    """Train G: source->target (and F: target->source for the cycle); returns the generator checkpoint.
    `data`: loader workers per stream and strictness, as the other stages read them."""
    data = data or DataConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    src = StepBatches(open_dataset(source, strict=data.strict), cfg.batch_size, crop, scale, seed,
                      stream="translator-src")
    tgt = StepBatches(open_dataset(target, labelled=False, strict=data.strict), cfg.batch_size, crop, scale, seed,
                      stream="translator-tgt")
    g_st, g_ts = Generator(cfg.width, cfg.res_blocks).to(device), Generator(cfg.width, cfg.res_blocks).to(device)
    d_t = MultiScaleDiscriminator(cfg.width, cfg.disc_scales).to(device)
    d_s = MultiScaleDiscriminator(cfg.width, cfg.disc_scales).to(device)
    opt_g = torch.optim.Adam(list(g_st.parameters()) + list(g_ts.parameters()), cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(list(d_t.parameters()) + list(d_s.parameters()), cfg.lr, betas=(0.5, 0.999))
    vgg = load_vgg(cfg.vgg_weights, device) if cfg.vgg_weights else None
    gens, discs = {"g_st": g_st, "g_ts": g_ts}, {"d_t": d_t, "d_s": d_s}
    start = 0
    if resume and has_train_state(out / "state_g") and has_train_state(out / "state_d"):
        load_train_state(out / "state_d", discs, opt_d)
        info, _ = load_train_state(out / "state_g", gens, opt_g)
        start = int(info["step"])
        log.info("resuming translator from step %d", start)
    t0 = time.time()
    workers = default_workers() if data.workers is None else data.workers
    streams = BatchStream(src, start, cfg.steps, workers, device), BatchStream(tgt, start, cfg.steps, workers, device)
    with interrupt_at_step_boundary() as interrupt, progress_bar("translator", cfg.steps, completed=start) as bar:
        for step, b_s, b_t in zip(range(start, cfg.steps), *streams, strict=True):
            torch.manual_seed(int(step_rng(seed, step, "translator").integers(2**62)))
            (x_s, y_s), (x_t, _) = b_s.on(device), b_t.on(device)
            fake_t, fake_s = g_st(x_s), g_ts(x_t)
            loss_adv = lsgan_loss(d_t(fake_t), True) + lsgan_loss(d_s(fake_s), True)
            loss_cycle = (g_ts(fake_t) - x_s).abs().mean() + (g_st(fake_s) - x_t).abs().mean()
            loss_recon = (g_st(x_t) - x_t).abs().mean() + (g_ts(x_s) - x_s).abs().mean()
            loss_edge = semantic_edge_loss(fake_t, x_s, y_s)
            loss_g = (loss_adv + cfg.lambda_cycle * loss_cycle + cfg.lambda_recon * loss_recon
                      + cfg.lambda_edge * loss_edge)
            if vgg is not None:
                loss_g = loss_g + cfg.lambda_perceptual * (vgg(fake_t) - vgg(x_s)).abs().mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            loss_d = 0.5 * (lsgan_loss(d_t(x_t), True) + lsgan_loss(d_t(fake_t.detach()), False)
                            + lsgan_loss(d_s(x_s), True) + lsgan_loss(d_s(fake_s.detach()), False))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            bar.advance(text=f"G {loss_g.item():.3f} D {loss_d.item():.3f}")
            if (step + 1) % checkpoint_every == 0 and step + 1 < cfg.steps:
                save_train_state(out / "state_d", discs, opt_d, {"step": step + 1})
                save_train_state(out / "state_g", gens, opt_g, {"step": step + 1})
            if interrupt() and step + 1 < cfg.steps:
                save_train_state(out / "state_d", discs, opt_d, {"step": step + 1})
                save_train_state(out / "state_g", gens, opt_g, {"step": step + 1})
                raise stopped("translator", step + 1, out)
    log.info("translator: %d steps in %.0f s", cfg.steps - start, time.time() - t0)
    ckpt = save_generator(g_st, out / "translator.safetensors", cfg.width, cfg.res_blocks)
    save_train_state(out / "state_d", discs, opt_d, {"step": cfg.steps})
    save_train_state(out / "state_g", gens, opt_g, {"step": cfg.steps})
    return ckpt
