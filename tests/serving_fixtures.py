"""Model files the serving tests share."""

from __future__ import annotations

from pathlib import Path


def write_perturbed_models(d: Path, checkpoint: Path) -> Path:
    """d/a.safetensors and d/b.safetensors (the checkpoint's weights perturbed two ways, so their label maps
    vary across an image and differ from each other), and d/corrupt.safetensors."""
    import torch

    from diga_sdk.models.checkpoint import load_checkpoint, save_checkpoint

    for name, seed in (("a", 1), ("b", 2)):
        model, meta = load_checkpoint(checkpoint)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * p.std().clamp_min(1e-3))
        save_checkpoint(model, d / f"{name}.safetensors", meta)
    (d / "corrupt.safetensors").write_bytes(b"\x00" * 64)
    return d
