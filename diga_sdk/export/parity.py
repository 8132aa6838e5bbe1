"""Parity of an exported model with PyTorch on real dataset images: max |logit diff| and argmax agreement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DigaError
from .images import dataset_images

MAX_ABS_DIFF = 1e-4  # fp32 logits
MIN_AGREEMENT = 99.9  # percent of pixels with the same argmax


def check_parity(checkpoint: str | Path, exported: str | Path, data: str, *, n_images: int = 8,
                 size: tuple[int, int] | None = None, runtime: str = "onnxruntime", batch_size: int = 2,
                 max_abs_diff: float = MAX_ABS_DIFF, min_agreement: float = MIN_AGREEMENT) -> dict[str, Any]:
    """Run the checkpoint in PyTorch fp32 and the export in `runtime` on `n_images` real images of `data`.

    Returns a report with `passed`; thresholds: max |logit diff| <= max_abs_diff and argmax agreement
    >= min_agreement percent (a graph with embedded post-processing is also checked on its label output)."""
    from ..runtime.runtimes import open_runtime

    ref = open_runtime(checkpoint, "torch")
    exp = open_runtime(exported, runtime)
    if exp.model_hash and ref.model_hash != exp.model_hash:
        raise DigaError(f"{exported} was exported from checkpoint {exp.model_hash}, not from {checkpoint} "
                        f"({ref.model_hash}); compare an export with its own checkpoint")
    samples = dataset_images(data, n_images, size)
    max_diff, agree, label_agree, pixels = 0.0, 0, 0, 0
    per_image = []
    by_shape: dict[tuple[int, ...], list[Any]] = {}
    for s in samples:
        by_shape.setdefault(s.image.shape, []).append(s)
    for group in by_shape.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start:start + batch_size]
            batch = np.stack([s.image for s in chunk])
            a, b = ref.logits(batch), exp.logits(batch)
            labels = exp.predict(batch)
            diff = np.abs(a - b).reshape(len(chunk), -1).max(1)
            am, bm = a.argmax(1), b.argmax(1)
            for i, s in enumerate(chunk):
                same = float((am[i] == bm[i]).mean() * 100)
                per_image.append({"name": s.name, "max_abs_diff": float(diff[i]), "argmax_agreement": same})
            max_diff = max(max_diff, float(diff.max()))
            agree += int((am == bm).sum())
            label_agree += int((am == labels).sum())
            pixels += am.size
    agreement = 100.0 * agree / pixels
    label_agreement = 100.0 * label_agree / pixels
    passed = (max_diff <= max_abs_diff and agreement >= min_agreement and label_agreement >= min_agreement)
    return {
        "passed": passed, "checkpoint": str(checkpoint), "exported": str(exported), "runtime": exp.label,
        "data": data, "images": len(samples), "size": list(samples[0].image.shape[:2]),
        "max_abs_logit_diff": max_diff, "argmax_agreement": agreement, "label_output_agreement": label_agreement,
        "thresholds": {"max_abs_logit_diff": max_abs_diff, "argmax_agreement": min_agreement},
        "per_image": per_image,
    }


def format_parity(report: dict[str, Any]) -> str:
    """One line: verdict, max diff and agreement against the thresholds."""
    t = report["thresholds"]
    verdict = "PASSED" if report["passed"] else "FAILED"
    return (f"parity {verdict}: {report['runtime']} vs PyTorch fp32 on {report['images']} images of {report['data']} "
            f"at {report['size'][0]}x{report['size'][1]}: max |logit diff| {report['max_abs_logit_diff']:.2e} "
            f"(<= {t['max_abs_logit_diff']:.0e}), argmax agreement {report['argmax_agreement']:.3f}% "
            f"(>= {t['argmax_agreement']}%)")
