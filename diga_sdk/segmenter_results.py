"""The typed results `Segmenter` returns: each a dataclass with `.to_dict()` and `.to_json()`; the CLI's
`--json` files are their `to_dict()`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DigaError

if TYPE_CHECKING:
    from .segmenter import Segmenter


class _Result:
    """`to_json()` for every result: the JSON text of `to_dict()`."""

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - every result overrides it
        raise NotImplementedError

    def to_json(self, indent: int | None = 2) -> str:
        """The result as JSON text (what the matching CLI command writes with --json)."""
        return json.dumps(self.to_dict(), indent=indent, default=str)


@dataclass(eq=False)
class Prediction(_Result):
    """One image's prediction: the label map, and the image it was made from."""

    image: np.ndarray  # (H, W, 3) uint8 RGB, as given
    labels: np.ndarray  # (H, W) uint8 train IDs (255 = ignore)
    class_names: list[str]
    palette: list[list[int]]
    path: Path | None = None  # the image file, when predicted from one
    runtime: str = ""  # 'runtime (precision)' that made it

    def colorize(self) -> np.ndarray:
        """(H, W, 3) uint8: the label map in the model's palette (ignore is black)."""
        from .data.images import colorize

        return colorize(self.labels, self.palette)

    def overlay(self, alpha: float = 0.5) -> np.ndarray:
        """(H, W, 3) uint8: the palette colours blended over the image (ignore pixels keep the image)."""
        from .data.images import overlay

        if not 0.0 <= alpha <= 1.0:
            raise DigaError(f"overlay alpha {alpha} is outside [0, 1]")
        return overlay(self.image, self.labels, self.palette, alpha)

    def save(self, path: str | Path, color: bool = False) -> Path:
        """Write the label map as a PNG of train IDs (or, with color=True, in the palette's colours), atomically."""
        from PIL import Image

        from .io import atomic_path

        p = Path(path)
        if p.suffix.lower() != ".png":
            raise DigaError(f"prediction file {p} must end in .png (a lossless format keeps the label IDs exact)")
        p.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(p) as tmp:
            Image.fromarray(self.colorize() if color else self.labels).save(tmp, format="PNG")
        return p

    def class_pixels(self) -> dict[str, int]:
        """Pixels per predicted class name (classes that do not occur are left out; 'ignore' for 255)."""
        ids, counts = np.unique(self.labels, return_counts=True)
        names = {i: n for i, n in enumerate(self.class_names)}
        return {names.get(int(i), "ignore" if i == 255 else str(int(i))): int(c) for i, c in zip(ids, counts, strict=True)}

    def to_dict(self) -> dict[str, Any]:
        return {"path": None if self.path is None else str(self.path), "height": int(self.labels.shape[0]),
                "width": int(self.labels.shape[1]), "runtime": self.runtime, "class_pixels": self.class_pixels()}


@dataclass
class EvalResult(_Result):
    """mIoU (%), per-class IoU (% or None where the class never occurs) and pixel accuracy (%) on one dataset."""

    data: str
    miou: float
    per_class: dict[str, float | None]
    pixel_acc: float
    summary: dict[str, Any] = field(default_factory=dict, repr=False)  # everything the evaluator reported

    @classmethod
    def from_summary(cls, data: str, summary: dict[str, Any]) -> EvalResult:
        return cls(data, float(summary["miou"]), dict(summary["per_class"]), float(summary["pixel_accuracy"]),
                   dict(summary))

    def to_dict(self) -> dict[str, Any]:
        """The evaluator's summary (the value `diga eval --json` writes under the dataset spec)."""
        return dict(self.summary) or {"miou": self.miou, "pixel_accuracy": self.pixel_acc, "per_class": self.per_class}


@dataclass
class ExportReport(_Result):
    """Where the export went, its format, the parity check against PyTorch and the mIoU change (reduced precisions)."""

    path: Path
    format: str
    parity: dict[str, Any] | None
    miou_delta: float | None
    report: dict[str, Any] = field(default_factory=dict, repr=False)  # the whole export report

    @classmethod
    def from_report(cls, report: dict[str, Any]) -> ExportReport:
        change = (report.get("accuracy") or {}).get("change") or {}
        return cls(Path(report["out"]), report["format"], report.get("parity"), change.get("delta"), report)

    @property
    def parity_passed(self) -> bool | None:
        """True/False from the parity check; None when it was skipped."""
        return None if self.parity is None else bool(self.parity.get("passed"))

    def to_dict(self) -> dict[str, Any]:
        """The export report (what `diga export --json` writes)."""
        return dict(self.report)


@dataclass
class AdaptRun(_Result):
    """One adaptation run: an entry per stage (mIoU, checkpoint) and the final model as a Segmenter."""

    out: Path
    stages: list[dict[str, Any]]
    seeds: int = 1
    checkpoint_selection: str = "last"
    mode: str = "uda"  # uda, dg or semi
    details: dict[str, Any] = field(default_factory=dict)  # the mode's extras: dg margins, semi split sizes

    def miou(self, stage: str, spec: str | None = None) -> float | None:
        """A stage's mIoU (%): on target-val (uda, semi) or on the evaluation set `spec` (dg; default the first)."""
        entry = next((s for s in self.stages if s["name"] == stage), None)
        if entry is None:
            raise DigaError(f"no stage {stage!r} in this run; stages: {', '.join(s['name'] for s in self.stages)}")
        if "eval" in entry:
            return entry["eval"][spec] if spec is not None else next(iter(entry["eval"].values()))
        return entry.get("target_val_miou")

    @property
    def final_checkpoint(self) -> Path:
        """The last stage's checkpoint (the adapted model)."""
        for stage in reversed(self.stages):
            ckpt = stage.get("checkpoint") or next((s["checkpoint"] for s in stage.get("per_seed", ())
                                                     if s.get("checkpoint")), None)  # several seeds: the first
            if ckpt:
                return Path(ckpt)
        raise DigaError(f"the adaptation run in {self.out} produced no checkpoint")

    @property
    def final(self) -> Segmenter:
        """The adapted model, ready to predict, evaluate or export."""
        from .segmenter import Segmenter

        return Segmenter(self.final_checkpoint)

    def to_dict(self) -> dict[str, Any]:
        """What `diga adapt --json` (`diga adapt dg|semi --json`) writes."""
        if self.mode != "uda":
            return {"stages": self.stages, **self.details}
        return {"stages": self.stages, "seeds": self.seeds, "checkpoint_selection": self.checkpoint_selection}


@dataclass
class LatencyReport(_Result):
    """Latency per runtime path, size and batch (p50/p90/p99 ms, throughput, peak RSS), and the machine it ran on."""

    rows: list[dict[str, Any]]
    machine: dict[str, Any]
    result: dict[str, Any] = field(default_factory=dict, repr=False)  # the whole benchmark result

    def p50_ms(self, variant: str, size: str | None = None, batch: int = 1) -> float:
        """The median latency of one path (e.g. 'onnxruntime-fp32') at one size ('512x1024') and batch."""
        for r in self.rows:
            if r["variant"] == variant and r["batch"] == batch and (size is None or r["size"] == size):
                return float(r["p50_ms"])
        raise DigaError(f"no latency row for {variant} at {size or 'any size'}, batch {batch}; "
                        f"measured: {sorted({r['variant'] for r in self.rows})}")

    def table(self) -> str:
        """The markdown table `diga bench latency` prints."""
        from .bench.latency import markdown_table

        return markdown_table(self.result)

    def to_dict(self) -> dict[str, Any]:
        """What `diga bench latency --json` writes."""
        return dict(self.result)
