"""mIoU of any runtime on a labelled dataset, and the change against the fp32 reference."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..data.datasets import open_dataset
from ..errors import DigaError
from ..metrics import ConfusionMatrix
from ..progress import progress_bar


def runtime_miou(runtime: Any, data: str, batch_size: int = 4, limit: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run `runtime.predict` over a labelled dataset (full-size images) and summarise the confusion matrix."""
    ds = open_dataset(data)
    if not ds.has_labels:
        raise DigaError(f"dataset {data} has no labels; --val needs a labelled split such as synthetic:target@val")
    n = len(ds) if limit is None else min(limit, len(ds))
    cm = ConfusionMatrix(runtime.meta.num_classes)
    with progress_bar(f"mIoU {runtime.label}", n) as bar:
        for start in range(0, n, batch_size):
            samples = [ds[i] for i in range(start, min(start + batch_size, n))]
            shapes = {s.image.shape for s in samples}
            groups = [samples] if len(shapes) == 1 else [[s] for s in samples]
            for group in groups:
                pred = runtime.predict(np.stack([s.image for s in group]))
                cm.update(pred, np.stack([s.label for s in group]))
            bar.set(min(start + batch_size, n))
            if progress:
                progress(min(start + batch_size, n), n)
    summary = cm.summary()
    summary.update({"runtime": runtime.label, "data": data, "images": n})
    return summary


def miou_change(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """{'fp32': ..., 'reduced': ..., 'delta': reduced - fp32} in mIoU points."""
    return {"reference": reference["runtime"], "reference_miou": reference["miou"], "runtime": other["runtime"],
            "miou": other["miou"], "delta": other["miou"] - reference["miou"]}
