"""Step-cost benchmark: one warm-up step and one self-training step against one source-only step at
the same batch (light model, batch 4, 128x256 crops), timed round-robin so load drifts hit all
three alike; medians and ratios, JSON + markdown, the machine recorded."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..adapt.augment import StrongView
from ..adapt.distill import StepContext, diga_step
from ..adapt.ema import EMATeacher
from ..adapt.mixture import cross_domain_mixture
from ..adapt.optim import make_optimizer, set_poly_lr
from ..adapt.supervised import seg_loss
from ..adapt.translators import FourierTranslator
from ..config import DistilConfig, OptimConfig, SelectionConfig
from ..data.transforms import normalize
from ..io import atomic_write_bytes, atomic_write_json
from ..models.registry import build_model, channels_last
from ..progress import console
from ..results import env_info


def _blocky_labels(b: int, h: int, w: int, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """Labels made of 16x16 blocks of random classes (a realistic number of classes per crop)."""
    coarse = torch.randint(0, num_classes, (b, (h + 15) // 16, (w + 15) // 16), generator=gen)
    return coarse.repeat_interleave(16, 1).repeat_interleave(16, 2)[:, :h, :w].contiguous()


def run_step_benchmark(json_path: str | Path | None, repeats: int = 10, threads: int = 2, batch: int = 4,
                       crop: tuple[int, int] = (128, 256), model_name: str = "light") -> dict[str, Any]:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    h, w = crop
    num_classes = 19
    x_s, x_t = torch.rand(batch, 3, h, w, generator=gen), torch.rand(batch, 3, h, w, generator=gen)
    y_s, pl_t = _blocky_labels(batch, h, w, num_classes, gen), _blocky_labels(batch, h, w, num_classes, gen)
    total = 10**6  # a long schedule: the learning rate barely moves while we time

    def make(kind: str):
        model = channels_last(build_model(model_name, num_classes)).train()  # as the trainers run it
        opt = make_optimizer(model, OptimConfig())
        if kind == "source_only":
            def step(i: int) -> None:
                set_poly_lr(opt, OptimConfig(), i, total)
                logits, _ = model(normalize(x_s))
                loss = seg_loss(logits, y_s)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return step
        selftrain = kind == "selftrain"
        scfg = DistilConfig(steps=total, lambda_distil=0.25 if selftrain else 0.5, aug_beta=0.3 if selftrain else 0.4)
        sel = SelectionConfig() if selftrain else None
        cents = torch.rand(num_classes, model.feature_dim, generator=gen) if selftrain else None
        ctx = StepContext(stage=kind, seed=0, scfg=scfg, num_classes=num_classes, net=model,
                          teacher=EMATeacher(model), optimizer=opt, translator=FourierTranslator(0.05),
                          strong=StrongView(), selection=sel, centroids=cents,
                          seen=torch.ones(num_classes, dtype=torch.bool) if selftrain else None)
        return lambda i: diga_step(ctx, i, x_s, y_s, x_t, pl_t if selftrain else None)

    def views() -> Callable[[int], None]:
        view, fourier = StrongView(), FourierTranslator(0.05)
        return lambda i: cross_domain_mixture(view(x_s, 0.4, i), fourier(x_s, x_t), y_s, num_classes,
                                              torch.Generator().manual_seed(i))

    def teacher_forward() -> Callable[[int], None]:
        teacher = EMATeacher(build_model(model_name, num_classes))
        x2 = torch.cat([x_s, x_t])
        return lambda i: teacher(normalize(x2))

    def reference_kernels(step: Callable[[int], None]) -> Callable[[int], None]:
        """The same step with the hot ops forced to their PyTorch references (the kernels' speed-up)."""
        def run(i: int) -> None:
            old = os.environ.get("DIGA_KERNELS")
            os.environ["DIGA_KERNELS"] = "reference"
            try:
                step(i)
            finally:
                if old is None:
                    os.environ.pop("DIGA_KERNELS", None)
                else:
                    os.environ["DIGA_KERNELS"] = old
        return run

    kinds = ("source_only", "warmup", "selftrain", "warmup_views_only", "teacher_forward_2b",
             "warmup_reference_kernels", "selftrain_reference_kernels")
    steps = {k: make(k) for k in kinds[:3]}
    steps["warmup_reference_kernels"] = reference_kernels(make("warmup"))
    steps["selftrain_reference_kernels"] = reference_kernels(make("selftrain"))
    steps["warmup_views_only"] = views()
    steps["teacher_forward_2b"] = teacher_forward()
    for k in kinds:  # warm-up runs: allocator, oneDNN primitive caches
        for i in range(2):
            steps[k](i)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(repeats):
        for k in kinds:
            t0 = time.perf_counter()
            steps[k](r + 2)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "diga step cost", "model": model_name, "batch": batch, "crop": list(crop), "repeats": repeats,
        "median_s": med, "times_s": times,
        "ratio_vs_source_only": {k: med[k] / med["source_only"] for k in kinds},
        "target": {"warmup_ratio_max": 2.5, "met": med["warmup"] / med["source_only"] <= 2.5},
        "kernel_speedup": {k: med[f"{k}_reference_kernels"] / med[k] for k in ("warmup", "selftrain")},
        "env": env_info(),
    }
    md = ["| step | median (s) | x source-only |", "|---|---:|---:|"]
    md += [f"| {k} | {med[k]:.3f} | {med[k] / med['source_only']:.2f} |" for k in kinds]
    table = "\n".join(md)
    console.print(table, highlight=False)
    if json_path is not None:
        atomic_write_json(json_path, result)
        atomic_write_bytes(Path(json_path).with_suffix(".md"), (table + "\n").encode())
    return result
