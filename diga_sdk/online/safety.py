"""Unsupervised health signals of online adaptation and the rule that calls a collapse.

Per frame, from the teacher's prediction (no labels anywhere):
- kept: the share of pixels whose pseudo-label survives bilateral consensus with the centroids;
- entropy: mean per-pixel prediction entropy, normalised by log(C);
- agreement: share of pixels where the student's argmax equals the teacher's (after an update);
- drift: total-variation distance between the recent predicted class distribution and the reference
  one measured on the first frames with the shipped model;
- diversity: effective number of predicted classes, exp(entropy of the class distribution);
- distance: mean distance of each pixel's feature to its nearest class centroid (input or features
  unlike anything the model knows: blank, noise, a covered lens).

Two slow signals compare the adapted teacher with the frozen shipped model on the same input, so a
weather or camera change (which moves both alike) does not read as a failure:
- shares (label-free, on the shadow frames): total-variation distance between the smoothed predicted
  class shares of the adapted teacher and of the shipped model on the same frames; one class
  swallowing another (cars eating the road) grows it while a fixed error of the shipped model does not;
- source_drop (labelled, `online.SourceCheck`): mIoU of the shipped model minus that of the adapted
  teacher on a held-out slice of the carried source images that no update ever sees.

One input signal decides who serves, not whether to roll back:
- look_shift (`LookShift`): how far the input's per-channel mean and spread moved between a fast and a slow
  running mean; a change of light or weather hands the output to the shipped model (`max_look_shift`).

The first `calib_frames` frames set the reference. Each signal is smoothed (EMA) and a frame is
"bad" when any smoothed signal crosses its bound; `patience` bad frames in a row call a collapse.
Collapse-shaped failures (one class everywhere, blank or noise input, a student drifting away from
its teacher) cross these bounds; a camera or weather change moves them less (the bounds were set on
the fog and dusk scenarios of `diga_sdk.data.streams`, see docs/online.md, "Measured").
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field

from ..config import DigaConfig

SLOW_REASONS = frozenset({"shares", "source"})  # the slow signals' violations (`online.SLOW_FAILURES`)


class SafetyConfig(DigaConfig):
    """Bounds of the health monitor (relative to the reference unless named absolute)."""

    enabled: bool = True
    calib_frames: int = 8
    smoothing: float = 0.5  # EMA weight of the newest frame
    # agreement is measured on one random strongly augmented crop per update, so a single value swings
    # by +-0.1 on a healthy stream (256x512 runs, docs/online.md): it is smoothed over ~5 updates, not 2
    agreement_smoothing: float = 0.2
    patience: int = 2  # consecutive bad frames that call a collapse
    # Bounds set from the shipped warm-up model's smoothed signals on 256x512 streams (docs/online.md,
    # "Measured"): clear, fog and dusk must pass, noise must not.
    min_kept_ratio: float = 0.35  # kept < 0.35 * reference kept (fog min 0.52x)
    max_drift: float = 0.7  # absolute total-variation distance (clear <= 0.27, dusk <= 0.53, fog <= 0.60)
    min_diversity_ratio: float = 0.25  # effective classes < 0.25 * reference (fog min 0.28x: 0.5 false-alarmed on fog)
    min_entropy_ratio: float = 0.25  # over-confident collapse: entropy < 0.25 * reference
    max_entropy_ratio: float = 3.0
    # mean nearest-centroid distance outside [ref/r, r*ref] (None = off): clear/fog/dusk stay within
    # [0.79, 1.20] x ref, noise frames reach 1.42-1.49 x ref from their third frame
    max_distance_ratio: float | None = 1.35
    # weight of each healthy frame in the distance reference after calibration (0 = fixed reference).
    # Adaptation itself moves the features away from the slowly updated centroids (anchored 600-frame
    # run: 33 frames over 1.35x a fixed reference, 12 rollbacks in all); noise or a blank lens jumps in 2-3 frames
    distance_tracking: float = 0.02
    # absolute share of pixels. Measured on the clean 256x512 target stream (docs/online.md):
    # 0.4 let a slow self-training drift through (-9 mIoU by frame 150, no other signal crossed its bound);
    # 0.6 stops the student once it moved that far from its teacher
    min_agreement: float | None = 0.6  # None = off (it only false-alarmed under fog: the recipe turns it off)
    # shadow check: every `shadow_every` frames the frozen shipped model also predicts the frame, and the
    # adapted teacher's consensus-kept share is compared with the shipped model's on that same frame.
    # A teacher drifting into its own mistakes loses the agreement between its classifier and its
    # feature centroids (anchored 1200-frame run: 0.90 -> 0.55 while mIoU fell from +7 to -7 vs frozen)
    # while a weather change lowers both models' share alike. 0 = off.
    shadow_every: int = 5
    min_kept_vs_shipped: float = 0.85  # smoothed adapted / shipped kept share on the shadow frames
    shadow_smoothing: float = 0.3
    recover_frames: int = 3  # healthy frames in a row before updates resume after a rollback
    # class-share divergence (shadow frames): smoothed TV distance between the adapted teacher's and the
    # shipped model's predicted class shares on the same frames; above it = "shares". None = off
    max_share_divergence: float | None = None
    share_smoothing: float = 0.1  # EMA weight of each shadow frame in both smoothed share vectors
    # held-out source slice: shipped mIoU - adapted mIoU on it (points); above it = "source". None = off
    max_source_drop: float | None = None
    # probation (`online.OnlineConfig.probation`): the teacher serves again only when its held-out drop is at
    # most this (points; 0 = at least as good as the shipped model on the held-out slice) and the share
    # divergence within half its bound, for two full held-out cycles in a row
    promote_max_source_drop: float = 0.0
    # while the teacher serves: a held-out drop above this (points) hands the output back to the shipped model
    # (probation) without rolling the teacher back; the teacher learns on and serves again once it passes the
    # promotion rule. None = off (only the rollback bound max_source_drop acts)
    serve_max_source_drop: float | None = None
    # what passing serve_max_source_drop does: "shipped" hands the output to the shipped model while the teacher
    # learns on from where it is; "rollback" rolls the teacher back to its last safe weights (held-out drop
    # within half the rollback bound, confirmed a cycle later) with the lr backed off, and those weights serve
    # in probation: a teacher that drifts slowly on source restarts from a known-good point at a slower pace
    # instead of drifting on while it waits to be promoted
    serve_drop_action: Literal["shipped", "rollback"] = "shipped"
    # the look of the input (`LookShift`: each frame's per-channel mean and spread, a fast and a slow running
    # mean): a change beyond this (max abs difference of the two, in [0,1] units) hands the output to the shipped
    # model, and the teacher serves again only once the look is steady (within the bound) and it passes the
    # promotion rule. Weights adapted to one light or weather are not known to be better than the shipped model
    # under the next (dusk after clear). None = off
    max_look_shift: float | None = None
    # when the look comes back (the fast look within max_look_shift of the look before the change), the weights
    # that served before the change serve again, in probation, instead of the shipped model: they served under
    # this look (dusk ends, the tunnel is left). False = the shipped model serves until the teacher is promoted
    serve_on_look_return: bool = True
    look_fast: float = Field(0.1, gt=0.0, le=1.0)  # EMA weight of each frame in the fast look
    look_slow: float = Field(0.01, gt=0.0, le=1.0)  # and in the slow one (both: the exact mean over the first frames)


def frame_signals(t_logits: torch.Tensor, kept: float, features: torch.Tensor | None = None,
                  centroids: torch.Tensor | None = None, seen: torch.Tensor | None = None) -> dict[str, Any]:
    """Entropy (normalised), class distribution and nearest-centroid distance of one frame's (1,C,h,w)
    teacher logits and (1,D,h,w) features."""
    prob = torch.softmax(t_logits.float(), 1)
    c = prob.shape[1]
    ent = float(-(prob * torch.log(prob.clamp_min(1e-12))).sum(1).mean() / math.log(c))
    hist = torch.bincount(prob.argmax(1).reshape(-1), minlength=c).double()
    dist = 0.0
    if features is not None and centroids is not None and seen is not None and bool(seen.any()):
        f = features[0].float().flatten(1).T  # (h*w, D)
        dist = float(torch.cdist(f, centroids[seen].float()).min(1).values.mean())
    return {"kept": kept, "entropy": ent, "hist": (hist / hist.sum().clamp_min(1)).tolist(), "distance": dist}


def share_divergence(adapted: list[float] | None, shipped: list[float] | None) -> float:
    """Total-variation distance between two class-share vectors (0 when either is missing)."""
    if not adapted or not shipped:
        return 0.0
    return 0.5 * sum(abs(a - b) for a, b in zip(adapted, shipped, strict=True))


def _diversity(hist: list[float]) -> float:
    p = torch.tensor(hist, dtype=torch.float64)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum())) if p.numel() else 0.0


class HealthMonitor:
    """Smoothed signals, the reference, and the collapse call; its state is JSON (checkpointed)."""

    def __init__(self, cfg: SafetyConfig) -> None:
        self.cfg = cfg
        self.n_calib = 0
        self.ref: dict[str, Any] = {}
        self.smooth: dict[str, Any] = {}
        self.bad_streak = 0
        self.good_streak = 0
        self.last_reasons: list[str] = []
        self.rebase_left = 0  # frames still re-measuring the distance reference (new centroids)

    def state(self) -> dict[str, Any]:
        return {"n_calib": self.n_calib, "ref": self.ref, "smooth": self.smooth, "bad_streak": self.bad_streak,
                "good_streak": self.good_streak, "rebase_left": self.rebase_left}

    def load(self, state: dict[str, Any]) -> None:
        self.n_calib, self.ref, self.smooth = state["n_calib"], state["ref"], state["smooth"]
        self.bad_streak, self.good_streak = state["bad_streak"], state["good_streak"]
        self.rebase_left = state.get("rebase_left", 0)

    def rebase_distance(self) -> None:
        """The centroids were replaced (fleet model), or the light came back after a look change: the distance
        reference no longer applies; the next `calib_frames` frames measure it again (distance unchecked meanwhile)."""
        if self.calibrated:
            self.rebase_left = self.cfg.calib_frames
            self.ref["n_distance_rebase"] = 0

    @property
    def calibrated(self) -> bool:
        return self.n_calib >= self.cfg.calib_frames

    def observe(self, sig: dict[str, Any], agreement: float | None) -> bool:
        """Fold in one frame; returns True when the smoothed signals call a collapse."""
        a = self.cfg.smoothing
        if not self.calibrated:  # running mean of the shipped model's first frames
            k = self.n_calib
            for key in ("kept", "entropy"):
                self.ref[key] = (self.ref.get(key, 0.0) * k + sig[key]) / (k + 1)
            if sig["distance"] > 0:  # frames before any centroid exists have no distance
                nd = self.ref.get("n_distance", 0)
                self.ref["distance"] = (self.ref.get("distance", 0.0) * nd + sig["distance"]) / (nd + 1)
                self.ref["n_distance"] = nd + 1
            self.ref.setdefault("distance", 0.0)
            old = self.ref.get("hist", [0.0] * len(sig["hist"]))
            self.ref["hist"] = [(o * k + h) / (k + 1) for o, h in zip(old, sig["hist"], strict=True)]
            self.n_calib += 1
            if self.calibrated:
                self.ref["diversity"] = _diversity(self.ref["hist"])
                self._reset_smooth()
            return False
        s = self.smooth
        if self.rebase_left > 0 and sig["distance"] > 0:
            nd = self.ref.get("n_distance_rebase", 0)
            self.ref["distance"] = (self.ref["distance"] * nd + sig["distance"]) / (nd + 1)
            self.ref["n_distance_rebase"] = nd + 1
            s["distance"] = self.ref["distance"] - a * sig["distance"]  # so that the update below lands on the ref
            s["distance"] /= 1 - a
            self.rebase_left -= 1
        s["kept"] = (1 - a) * s["kept"] + a * sig["kept"]
        s["entropy"] = (1 - a) * s["entropy"] + a * sig["entropy"]
        s["distance"] = (1 - a) * s["distance"] + a * sig["distance"]
        s["hist"] = [(1 - a) * o + a * h for o, h in zip(s["hist"], sig["hist"], strict=True)]
        if sig.get("kept_shipped"):
            w = self.cfg.shadow_smoothing
            s["kept_vs_shipped"] = (1 - w) * s.get("kept_vs_shipped", 1.0) + w * sig["kept"] / sig["kept_shipped"]
        if sig.get("hist_shipped") is not None:
            w = self.cfg.share_smoothing
            for key, h in (("share_adapted", sig["hist"]), ("share_shipped", sig["hist_shipped"])):
                old = s.get(key) or h
                s[key] = [(1 - w) * o + w * x for o, x in zip(old, h, strict=True)]
        if sig.get("source_drop") is not None:
            s["source_drop"] = float(sig["source_drop"])
        if agreement is not None:
            w = self.cfg.agreement_smoothing
            s["agreement"] = (1 - w) * s["agreement"] + w * agreement
        reasons = self.violations()
        self.last_reasons = reasons
        if reasons:
            self.bad_streak += 1
            self.good_streak = 0
        else:
            self.bad_streak = 0
            self.good_streak += 1
            w = self.cfg.distance_tracking
            if w > 0 and self.rebase_left == 0 and sig["distance"] > 0 and self.ref.get("distance", 0) > 0:
                self.ref["distance"] = (1 - w) * self.ref["distance"] + w * sig["distance"]
        # the slow signals call at once: each is already an aggregate (the whole held-out slice; class shares
        # smoothed over many shadow frames), and every frame of patience is a frame served by drifted weights
        return self.bad_streak >= self.cfg.patience or bool(set(reasons) & SLOW_REASONS)

    def signals(self) -> dict[str, float]:
        """The smoothed signals as numbers (for logs and JSON)."""
        if not self.calibrated:
            return {}
        s, r = self.smooth, self.ref
        out = {"kept": s["kept"], "entropy": s["entropy"], "agreement": s["agreement"], "distance": s["distance"],
               "drift": 0.5 * sum(abs(x - y) for x, y in zip(s["hist"], r["hist"], strict=True)),
               "diversity": _diversity(s["hist"]), "kept_vs_shipped": s.get("kept_vs_shipped", 1.0),
               "share_divergence": share_divergence(s.get("share_adapted"), s.get("share_shipped"))}
        if s.get("source_drop") is not None:
            out["source_drop"] = s["source_drop"]
        return out

    def violations(self) -> list[str]:
        c, r, v = self.cfg, self.ref, self.signals()
        out = []
        if v["kept"] < c.min_kept_ratio * r["kept"]:
            out.append("kept")
        if v["drift"] > c.max_drift:
            out.append("drift")
        if v["diversity"] < c.min_diversity_ratio * r["diversity"]:
            out.append("diversity")
        if not c.min_entropy_ratio * r["entropy"] <= v["entropy"] <= c.max_entropy_ratio * r["entropy"]:
            out.append("entropy")
        if c.min_agreement is not None and v["agreement"] < c.min_agreement:
            out.append("agreement")
        if v["kept_vs_shipped"] < c.min_kept_vs_shipped:
            out.append("shipped")
        if c.max_share_divergence is not None and v["share_divergence"] > c.max_share_divergence:
            out.append("shares")
        if c.max_source_drop is not None and v.get("source_drop", 0.0) > c.max_source_drop:
            out.append("source")
        ratio = c.max_distance_ratio
        # one-sided: input unlike anything the model knows moves features AWAY from every centroid
        if ratio is not None and r["distance"] > 0 and self.rebase_left == 0 and v["distance"] > ratio * r["distance"]:
            out.append("distance")
        return out

    def after_rollback(self) -> None:
        """Start the model's smoothed signals again from the reference; the bad streak is spent. The
        feature distance keeps its smoothed value: it reads the input (noise, a covered lens), which a
        rollback does not change, and reset to the reference it let the next two noise frames pass as
        healthy and be learned from (256x512 noise run). The slow signals (shares, source_drop) start
        again from nothing: they described the weights that were just thrown away."""
        distance = self.smooth.get("distance")
        self._reset_smooth()
        if distance is not None:
            self.smooth["distance"] = distance
        self.bad_streak = 0
        self.good_streak = 0

    def _reset_smooth(self) -> None:
        r = self.ref
        self.smooth = {"kept": r["kept"], "entropy": r["entropy"], "distance": r["distance"], "hist": list(r["hist"]),
                       "agreement": 1.0, "kept_vs_shipped": 1.0}


class LookShift:
    """How fast the input's look changes: per-channel mean and spread of each frame (every 4th pixel), a fast
    and a slow running mean of them; the shift is the largest gap between the two. Scene to scene the look
    varies (about 0.05 on the clear tuning streams with the default weights); dusk or fog move it by 0.14-0.2."""

    def __init__(self, fast: float, slow: float) -> None:
        self.fast_w, self.slow_w = fast, slow
        self.fast: torch.Tensor | None = None
        self.slow: torch.Tensor | None = None
        self.n = 0

    def update(self, x: torch.Tensor) -> float:
        """`x`: (1,3,H,W) frame in [0,1]; returns the shift after it."""
        v = x[0, :, ::4, ::4].float().flatten(1)
        stats = torch.cat([v.mean(1), v.std(1)]).double()
        self.n += 1
        if self.fast is None or self.slow is None:
            self.fast, self.slow = stats.clone(), stats.clone()
        else:
            self.fast += max(self.fast_w, 1.0 / self.n) * (stats - self.fast)  # both the exact mean at first
            self.slow += max(self.slow_w, 1.0 / self.n) * (stats - self.slow)
        return self.shift

    @property
    def shift(self) -> float:
        return 0.0 if self.fast is None or self.slow is None else float((self.fast - self.slow).abs().max())

    def settle(self, look: torch.Tensor) -> None:
        """Take `look` as the steady look again (the light came back to it): the slow mean restarts there, so
        the way back is not read as a new change while the slow mean would still be catching up."""
        self.slow = look.clone()

    def gap_to(self, look: torch.Tensor) -> float:
        """How far the fast look is from an earlier (slow) look, in the units of `shift`."""
        return float("inf") if self.fast is None else float((self.fast - look).abs().max())

    def state(self) -> dict[str, Any]:
        return {"n": self.n, "fast": None if self.fast is None else self.fast.tolist(),
                "slow": None if self.slow is None else self.slow.tolist()}

    def load(self, state: dict[str, Any]) -> None:
        self.n = state["n"]
        self.fast = None if state["fast"] is None else torch.tensor(state["fast"], dtype=torch.float64)
        self.slow = None if state["slow"] is None else torch.tensor(state["slow"], dtype=torch.float64)

