"""Drive an OnlineAdapter over a frame stream and measure it: per-window mIoU of the adapted model
against the frozen shipped model on the same frames (when the stream carries labels, for scoring
only), per-frame cost, actions (updates, skips, rollbacks), peak RSS; JSON and a PNG curve."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..data.streams import Frame
from ..data.transforms import to_tensor
from ..evaluate import predict_labels
from ..io import atomic_path
from ..metrics import ConfusionMatrix
from ..progress import progress_bar
from ..results import peak_rss_mib
from .adapter import FrameResult, OnlineAdapter


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if values else None


def run_stream(adapter: OnlineAdapter, frames: Iterable[Frame], total: int, frozen: nn.Module | None = None,
               window: int = 20, on_frame: Callable[[Frame, FrameResult], None] | None = None,
               on_window: Callable[[list[dict[str, Any]]], None] | None = None) -> dict[str, Any]:
    """Feed every frame to `adapter`; score windows of `window` frames if frames carry labels (`on_window`
    sees the windows so far after each one: partial results of a long run)."""
    c = adapter.num_classes
    windows: list[dict[str, Any]] = []
    cm_a, cm_f = ConfusionMatrix(c), ConfusionMatrix(c)
    tot_a, tot_f = ConfusionMatrix(c), ConfusionMatrix(c)
    per_frame: list[dict[str, Any]] = []
    conds: dict[str, int] = {}
    start_index = adapter.frame_index
    t0 = time.perf_counter()
    with progress_bar("online", total) as bar:
        for n, fr in enumerate(frames):
            res = adapter.process(fr.image)
            if on_frame:
                on_frame(fr, res)
            rec = {"index": fr.index, "condition": fr.condition, "action": res.action, "total_ms": res.total_ms,
                   "predict_ms": res.predict_ms, "update_ms": res.update_ms, "crop_scale": res.crop_scale,
                   "reasons": res.reasons, **{f"sig_{k}": v for k, v in res.signals.items()}}
            if fr.label is not None:
                label = torch.from_numpy(fr.label)
                cm_a.update(torch.from_numpy(res.pred), label)
                tot_a.update(torch.from_numpy(res.pred), label)
                if frozen is not None:
                    pf = predict_labels(frozen, to_tensor(fr.image)[None])[0]
                    cm_f.update(pf, label)
                    tot_f.update(pf, label)
            per_frame.append(rec)
            conds[fr.condition] = conds.get(fr.condition, 0) + 1
            if (n + 1) % window == 0 or n + 1 == total:
                w = {"start": fr.index + 1 - sum(conds.values()), "stop": fr.index + 1, "conditions": conds,
                     "adapted_miou": _miou(cm_a), "frozen_miou": _miou(cm_f) if frozen is not None else None}
                if w["adapted_miou"] is not None and w["frozen_miou"] is not None:
                    w["gain"] = w["adapted_miou"] - w["frozen_miou"]
                windows.append(w)
                if on_window:
                    on_window(windows)
                cm_a, cm_f, conds = ConfusionMatrix(c), ConfusionMatrix(c), {}
            bar.advance(text=f"{res.action} {res.total_ms:.0f} ms")
    wall = time.perf_counter() - t0
    totals = [r["total_ms"] for r in per_frame]
    return {
        "frames": len(per_frame), "start_index": start_index, "wall_s": wall, "window": window, "windows": windows,
        "overall": {"adapted_miou": _miou(tot_a), "frozen_miou": _miou(tot_f) if frozen is not None else None},
        "cost_ms": {"median": percentile(totals, 50), "p90": percentile(totals, 90), "p99": percentile(totals, 99),
                    "max": max(totals) if totals else None,
                    "predict_median": percentile([r["predict_ms"] for r in per_frame], 50),
                    "update_median": percentile([r["update_ms"] for r in per_frame if r["update_ms"]], 50)},
        "peak_rss_mb": peak_rss_mib(), "adapter": adapter.summary(), "per_frame": per_frame,
    }


def _miou(cm: ConfusionMatrix) -> float | None:
    if int(cm.mat.sum()) == 0:
        return None
    return cm.miou()


def window_checks(result: dict[str, Any], warmup_fraction: float = 0.25, min_gain: float = 5.0,
                  max_loss: float = 1.0) -> dict[str, Any]:
    """The issue's bars on a scored run: after the first `warmup_fraction` of the stream the adapted
    model is >= `min_gain` mIoU above frozen, and in no window more than `max_loss` below."""
    scored = [w for w in result["windows"] if w.get("gain") is not None]
    if not scored:
        return {}
    cut = result["start_index"] + warmup_fraction * result["frames"]
    late = [w for w in scored if w["start"] >= cut]
    return {"min_gain_after_warmup": min((w["gain"] for w in late), default=None),
            "mean_gain_after_warmup": float(np.mean([w["gain"] for w in late])) if late else None,
            "worst_window_gain": min(w["gain"] for w in scored),
            "gain_bar_met": bool(late) and min(w["gain"] for w in late) >= min_gain,
            "no_loss_bar_met": min(w["gain"] for w in scored) >= -max_loss}


def plot_windows(result: dict[str, Any], path: str | Path, title: str = "online adaptation") -> Path:
    """Per-window mIoU of the adapted and the frozen model, with rollbacks and condition changes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = [w for w in result["windows"] if w["adapted_miou"] is not None]
    mid = [(w["start"] + w["stop"]) / 2 for w in ws]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(mid, [w["adapted_miou"] for w in ws], "o-", label="online adaptation")
    if any(w["frozen_miou"] is not None for w in ws):
        ax.plot(mid, [w["frozen_miou"] for w in ws], "s--", label="frozen (shipped)")
    for f in result["adapter"]["rollback_frames"]:
        ax.axvline(f, color="red", alpha=0.3, lw=1)
    prev = None
    for r in result["per_frame"]:
        if prev is not None and r["condition"] != prev:
            ax.axvline(r["index"], color="gray", ls=":", lw=1)
            ax.text(r["index"], ax.get_ylim()[0], f" {r['condition']}", fontsize=8, color="gray")
        prev = r["condition"]
    ax.set_xlabel("frame")
    ax.set_ylabel(f"mIoU per {result['window']}-frame window (%)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
