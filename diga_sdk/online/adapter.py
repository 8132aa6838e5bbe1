"""Online DiGA on a vehicle: adapt a shipped segmenter frame by frame, without labels, within a
per-frame time budget, never worse than what it shipped with.

Per frame:
1. The EMA teacher predicts the frame (this is the output). Its argmax is the frame's pseudo-label,
   filtered by bilateral consensus with the class centroids (`kernels.consensus_select`, no threshold).
2. The health monitor (`online_safety`) folds in unsupervised signals; a collapse restores the last
   good weights, and updates pause until the signals are healthy again.
3. Healthy frames enter a small replay buffer (frame, consensus label, teacher logits) and move the
   centroids (`kernels.centroid_sums` + momentum).
4. An update, if the budget allows: the current frame plus replayed ones, cropped; the student sees
   the strong photometric view (`augment.StrongView`) and a ClassMix of it: with a source anchor
   (`online_source`, `cfg.source`) DiGA's own source->target ClassMix (source classes with their
   ground truth pasted on the target crop), else frame-to-frame (`kernels.choose_classes` +
   `kernels.class_mix`); loss = CE on the mixed view + lambda * the teacher(clean) -> student(strong)
   half of DiGA's symmetric distillation; optionally a stochastic restore of `restore_prob` of the
   weights to the shipped values (CoTTA); then `teacher = a*teacher + (1-a)*student` (constant a: the
   student starts from the shipped model, so the warm-up ramp of offline training does not apply).
   The lr is cfg.lr x a linear warm-up (`lr_warmup` updates) x the shadow gate (`lr_gate`) x the
   rollback back-off.
5. Every `safety.shadow_every` frames the frozen shipped model predicts the frame too (the shadow
   check in `online_safety`): its smoothed kept-share ratio gates the lr, and below its bound rolls
   back; a rollback the model caused (shadow check, agreement) also multiplies the lr by
   `rollback_lr_factor`.

BatchNorm (explicit, `bn`): "adapt" (default) moves the student's running statistics toward the
clean target crops of each update (a no-grad train-mode forward on them, momentum `bn_momentum`),
while the training forward normalises its augmented / mixed batch with that batch's own statistics
and leaves the running ones alone; the teacher, in eval mode, uses running statistics that are the
EMA of the student's, exactly like its weights. Measured (seed-1 stream, weights frozen): statistics
of the frames the model predicts are worth ~1 mIoU more than those of the augmented, source-mixed
training batch, which is what "adapt-batch" keeps. "frozen" keeps every BN layer in eval mode with
the shipped running statistics (only the affine parameters learn).

Budget: prediction always runs; the update's cost is modelled as overhead + ms per kilopixel of
crops, each with a running mean and a running mean absolute deviation (so the plan is a high
estimate, not the average); before the first update the model is a prior scaled from this frame's
own prediction time (an update's forward+backward costs about three forwards per pixel). Each frame
trains on the largest crop of the ladder whose planned cost (mean + 2 deviations) fits what is left
of the budget after prediction, the measured work after an update and, on a checkpoint frame, the
measured time of a state save; otherwise it skips the update. Prediction itself cannot be skipped:
a budget below the prediction time's own p99 cannot be kept (`summary()["over_budget"]` counts the
frames that overran).

State: everything (student, teacher, optimizer, centroids, last good weights, replay buffer,
monitor, counters) saves to one safetensors file with its JSON in the header, atomically; `resume`
continues where it stopped, and because every random draw is a function of (seed, frame index) a
resumed run ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .. import kernels
from ..adapt.augment import StrongView
from ..adapt.centroids import FAR, class_means, labels_at, momentum_update
from ..adapt.ema import EMATeacher
from ..adapt.mixture import source_to_target_classmix
from ..adapt.optim import make_optimizer
from ..adapt.supervised import seg_loss
from ..config import DigaConfig, OptimConfig
from ..data.labels import IGNORE_INDEX
from ..data.transforms import normalize, step_rng, to_tensor
from ..errors import DigaError
from ..io import atomic_path
from ..models.checkpoint import ModelMeta, load_checkpoint, load_weights, save_checkpoint
from ..models.registry import build_model, channels_last
from ..models.reparam import fold_reparam
from ..results import cpu_has_bf16_units
from ..runtime.live_onnx import FrozenOnnx, LiveOnnxGraph, onnxruntime_available
from .replay import ReplayBuffer
from .safety import SLOW_REASONS, HealthMonitor, LookShift, SafetyConfig, frame_signals
from .source import SourceAnchor, SourceCheck

STATE_VERSION = 2  # 2: the shipped weights (stochastic restore) are part of the state
MODEL_FAILURES = frozenset({"shipped", "agreement", "shares", "source"})  # reasons that blame the model, not the input
SLOW_FAILURES = SLOW_REASONS  # slow drifts: roll back to the last "safe" weights, not the last good
SPARSE_RESTORE_BELOW = 0.05  # stochastic restore draws positions instead of a full mask below this prob
CROP_LADDER = (1.0, 0.75, 0.5, 0.35, 0.25)  # update crop area, as fractions of `crop`
BUDGET_DEVIATIONS = 2.0  # planned update cost = mean + this many mean absolute deviations
BUDGET_MARGIN = 0.05  # share of the budget kept free (timer jitter, allocator)
PRIOR_FB_FACTOR = 3.0  # before any update: forward+backward ms/kpx ~ 3 x the prediction's forward ms/kpx
# after this many budget skips in a row, one probe update (smallest crop) measures the cost anew, and the
# wait doubles after each probe that does not bring updates back: a single slow update (the first one
# compiling the numba kernels, a page-fault burst, another process) must not leave the planner skipping for
# the rest of the stream, and a model really too slow for the budget overruns it on a logarithmic share of
# frames only
REPROBE_AFTER_SKIPS = 4


class OnlineConfig(DigaConfig):
    """Every setting of online adaptation."""

    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_frames: int = Field(2, ge=1)  # the current frame + (batch_frames - 1) replayed frames
    # spread each update's batch over this many consecutive frames (gradient accumulation): every frame runs the
    # forward and backward of batch_frames / update_spread of the frames (its own + replayed ones) and the
    # optimizer steps on the last: the per-frame cost of the smaller batch, one step per update_spread frames
    # with the gradient of the whole batch
    update_spread: int = Field(1, ge=1)
    replay_capacity: int = Field(16, ge=0)
    crop: tuple[int, int] = (128, 256)  # update crop (multiples of 8); clipped to the frame
    aug_beta: float = 0.3
    lambda_distil: float = 0.25
    # precision of the update's student forward and backward: "bf16" (autocast; weights, optimizer and loss stay
    # fp32) costs about half on a CPU with bf16 units (fast, 8 crops of 128x256, 1 thread: 149 -> 83 ms) and
    # more than fp32 elsewhere; "auto" = bf16 where the CPU has the units (AVX512-BF16, AMX). Predictions are fp32
    update_precision: Literal["fp32", "bf16", "auto"] = "fp32"
    # parameter-name prefixes (e.g. ["stem"]) the updates leave at their shipped values: no gradient, no
    # optimizer state, and the backward pass stops before them (a frozen stem saves its backward, the costliest
    # per pixel); their BatchNorm running statistics still follow `bn`
    frozen: tuple[str, ...] = ()
    # the runtime of the per-frame predictions: "onnxruntime" runs the teacher's BN-folded graph with its
    # current weights as inputs and the shipped model with its weights embedded (`runtime.live_onnx`; 1.3x and
    # 1.9x the torch forward here); "auto" = onnxruntime when installed (the `export` extra), else torch
    predict_runtime: Literal["auto", "torch", "onnxruntime"] = "auto"
    ema_decay: float = 0.99
    bn: Literal["adapt", "adapt-batch", "frozen"] = "adapt"
    bn_momentum: float = 0.01
    centroid_momentum: float = 1e-3
    update_every: int = Field(1, ge=1)
    snapshot_every: int = Field(10, ge=1)  # frames between "last good" snapshots (taken only when healthy)
    checkpoint_every: int = Field(0, ge=0)  # frames between state saves; 0 = only on request
    budget_ms: float | None = None  # per-frame time budget (prediction + update); None = always update
    seed: int = 0
    # the source anchor (`online_source`): labelled source images the vehicle carries; each update pastes
    # half of a source crop's classes onto every target crop (DiGA's source->target ClassMix)
    source: str | None = None  # dataset spec, e.g. gta5:PATH or synthetic:source@train; None = target only
    source_samples: int = Field(64, ge=1)
    # held-out source slice (`online_source.SourceCheck`): this many more carried images, never trained on;
    # every `source_check_every` frames the teacher predicts one of them and the slice's shipped-minus-adapted
    # mIoU is the safety signal `source_drop` (bound: safety.max_source_drop). 0 = off
    source_holdout: int = Field(0, ge=0)
    source_check_every: int = Field(5, ge=1)
    source_scale: float = Field(1.0, gt=0.0, le=4.0)  # resize the carried images to the camera's object scale
    # a budget close to the prediction cost: when nothing was measured yet and the prior says no crop fits,
    # one probe update (smallest crop, the fewest frames the model trains on) measures the real cost; that frame may overrun
    budget_probe: bool = True
    # probation: after a rollback that a slow signal (shares, source) called, the output comes from the weights
    # rolled back to (a frozen copy, `served`) while the teacher learns again beside it; the teacher serves again
    # only once the slow signals have scored it within half their bounds (a full held-out cycle). So a stream
    # that keeps teaching the model the same wrong thing never reaches the output again. `probation_at_start`:
    # the shipped model serves until the teacher first passes that check. Costs one more forward per frame
    # while in probation (under a budget the teacher's forward and update wait for a frame with room)
    probation: bool = True
    probation_at_start: bool = False
    # stochastic restore (CoTTA): after each update every student weight returns to its shipped value with
    # this probability, so knowledge the stream does not exercise is never lost for good; 0 = off
    restore_prob: float = Field(0.0, ge=0.0, le=1.0)
    # after a rollback that the model caused (MODEL_FAILURES: it drifted from its own shipped self, or
    # its student left its teacher) the learning rate is multiplied by this: a stream that cannot
    # support the current pace gets a slower one. Input-caused rollbacks (noise, a blank lens) keep it
    rollback_lr_factor: float = Field(0.5, gt=0.0, le=1.0)
    # shadow-gated learning rate: the lr scales with the shadow check's smoothed kept-vs-shipped ratio,
    # linearly from 0 at lr_gate[0] to the full lr at lr_gate[1], so a teacher that starts to lose the
    # consensus the shipped model keeps learns more slowly long before it is bad enough to roll back
    # (stochastic restore and the BN statistics go on meanwhile). None = off
    lr_gate: tuple[float, float] | None = None
    # linear lr warm-up over this many updates: the first updates mostly move the BN statistics toward the
    # target, so the weights learn from the pseudo-labels of an already statistics-adapted teacher. 0 = off
    lr_warmup: int = Field(0, ge=0)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)

    @model_validator(mode="after")
    def _spread_divides_the_batch(self) -> OnlineConfig:
        if self.batch_frames % self.update_spread:
            raise ValueError(f"update_spread {self.update_spread} must divide batch_frames {self.batch_frames}: "
                             f"every frame of an update then trains on the same number of frames")
        return self

    @field_validator("lr_gate")
    @classmethod
    def _gate_is_a_rising_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0.0 <= v[0] < v[1]:
            raise ValueError(f"lr_gate {list(v)} must be [lo, hi] with 0 <= lo < hi, e.g. [0.9, 1.0]")
        return v


@dataclass
class FrameResult:
    """What one frame produced: the prediction and what the adapter did."""

    index: int
    pred: np.ndarray  # (H,W) uint8 train IDs
    action: str  # calibrate | update | skip-budget | skip-unhealthy | skip-schedule | rollback
    total_ms: float
    predict_ms: float
    update_ms: float = 0.0
    crop_scale: float = 0.0
    signals: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)


def _set_bn(model: nn.Module, mode: str, momentum: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum
            if mode == "frozen":
                m.eval()


@contextlib.contextmanager
def _bn_statistics_from(student: nn.Module, clean: torch.Tensor | None, meta: ModelMeta) -> Iterator[None]:
    """With `clean` crops: the running BN statistics move toward them (a no-grad train-mode forward), and
    the training forward inside the block normalises with its own batch statistics without moving them."""
    if clean is None:
        yield
        return
    with torch.no_grad():
        student(normalize(clean, meta.mean, meta.std))
    layers = [m for m in student.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum


def bernoulli_positions(n: int, prob: float, gen: torch.Generator) -> torch.Tensor:
    """The sorted positions where a Bernoulli(prob) mask over n elements is 1, drawn without the mask: the count
    from Binomial(n, prob), then that many distinct uniform positions (numpy's choice without replacement,
    O(count) for prob << 1)."""
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=gen)))
    idx = rng.choice(n, int(rng.binomial(n, prob)), replace=False, shuffle=False)
    return torch.from_numpy(np.sort(idx).astype(np.int64))


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of a dense tensor's memory (any memory format: channels-last weights included)."""
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


def _freeze(model: nn.Module, prefixes: tuple[str, ...]) -> None:
    """No gradient for the parameters under these name prefixes; a prefix that names none is an error."""
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            tops = sorted({n.split(".")[0] for n in names})
            raise DigaError(f"frozen: {prefix!r} names no parameter of this model; its top-level parts are {tops}")
    for n, p in model.named_parameters():
        if any(n == f or n.startswith(f + ".") for f in prefixes):
            p.requires_grad_(False)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class OnlineAdapter:
    """`OnlineAdapter(checkpoint, cfg).process(frame_uint8) -> FrameResult`; `save_state`, `resume`."""

    def __init__(self, model: str | Path | nn.Module, cfg: OnlineConfig | None = None,
                 meta: ModelMeta | None = None, centroids: tuple[torch.Tensor, torch.Tensor] | None = None,
                 state_path: str | Path | None = None) -> None:
        self.cfg = cfg or OnlineConfig()
        if isinstance(model, str | Path):
            model, meta = load_checkpoint(model, fold=True)
        if meta is None:
            meta = getattr(model, "diga_meta", None)
        if meta is None:
            raise DigaError("OnlineAdapter needs the model's ModelMeta (load it with diga_sdk.load_checkpoint)")
        self.meta = meta
        self.num_classes = meta.num_classes
        fold_reparam(model)  # the vehicle adapts the deployed form (training-only branches folded, in place)
        # channels-last weights: oneDNN convolves NHWC faster (fast, fwd+bwd of 8 crops of 128x256 on 1 thread:
        # 123 -> 98 ms); the teacher and shipped copies below inherit the layout, saved states are contiguous
        self.student = channels_last(model)
        # frames an update needs at the least (1, or the model's `min_train_images`: `fast` cannot train
        # BatchNorm on one small crop); updates wait until the replay holds them
        self.min_frames = int(getattr(model, "min_train_images", 1))
        self.frames_per_update = self.cfg.batch_frames // self.cfg.update_spread  # frames one frame trains on
        if self.frames_per_update < self.min_frames:
            spread = self.cfg.update_spread
            raise DigaError(f"model {meta.model_name} trains on at least {self.min_frames} images at once; set "
                            f"batch_frames to {self.min_frames * spread} or more (it is {self.cfg.batch_frames}"
                            + (f", spread over {spread} frames)" if spread > 1 else ")"))
        self.accumulated = 0  # frames of the current update whose gradients are accumulated (< update_spread)
        self.student.train()
        _set_bn(self.student, self.cfg.bn, self.cfg.bn_momentum)
        p = self.cfg.update_precision
        self.update_bf16 = p == "bf16" or (p == "auto" and cpu_has_bf16_units())
        self.onnx_predict = self.cfg.predict_runtime == "onnxruntime" or (
            self.cfg.predict_runtime == "auto" and onnxruntime_available())
        if self.onnx_predict and not onnxruntime_available():
            raise DigaError("predict_runtime onnxruntime needs onnx and onnxruntime: pip install 'diga-sdk[export]', "
                            "or set predict_runtime: torch")
        self.teacher = self._frozen_copy(self.student)
        # the shipped model, frozen: the target of stochastic restore and the shadow check's reference
        self.shipped = self._frozen_copy(self.student)
        self._onnx: LiveOnnxGraph | None = None
        # each predicting copy's folded weights as numpy views (a dropped served copy leaves with its entry)
        self._onnx_feeds: weakref.WeakKeyDictionary[EMATeacher, dict[str, np.ndarray]] = weakref.WeakKeyDictionary()
        self._onnx_shipped: FrozenOnnx | None = None
        self.shipped_centroids: torch.Tensor | None = None  # the centroids calibration ended with
        self.last_shadow = -(10**9)  # frame of the last shadow check
        _freeze(self.student, self.cfg.frozen)
        self.optimizer = make_optimizer(self.student, OptimConfig(lr=self.cfg.lr, momentum=self.cfg.momentum,
                                                                  weight_decay=self.cfg.weight_decay))
        self.lr_backoff = 1.0  # product of the rollback_lr_factor of every model-caused rollback so far
        d = getattr(self.student, "feature_dim", 256)
        if centroids is not None:
            self.centroids, self.seen = centroids[0].float().clone(), centroids[1].bool().clone()
        else:
            self.centroids = torch.full((self.num_classes, d), FAR)
            self.seen = torch.zeros(self.num_classes, dtype=torch.bool)
        self.pixel_counts = torch.zeros(self.num_classes, dtype=torch.float64)  # pixels behind each centroid
        self._calib_sums = torch.zeros(self.num_classes, d, dtype=torch.float64)
        self.replay = ReplayBuffer(self.cfg.replay_capacity)
        self.monitor = HealthMonitor(self.cfg.safety)
        self.look = LookShift(self.cfg.safety.look_fast, self.cfg.safety.look_slow)
        self.strong = StrongView()
        self.source = None
        if self.cfg.source:
            self.source = SourceAnchor(self.cfg.source, self.cfg.source_samples, self.cfg.seed,
                                       self.cfg.source_holdout, self.cfg.source_scale)
            self.source.check_crop(self.cfg.crop)
        self.source_check: SourceCheck | None = None
        self.last_source_check = -(10**9)
        if self.source is not None and self.cfg.source_holdout:
            self.source_check = SourceCheck(self.source, self.num_classes)
            with torch.no_grad():
                self.source_check.calibrate(lambda x: self._predict(self.shipped, x)[2])
        self.probed = False
        self.budget_skips_in_row = 0  # frames in a row whose planned update did not fit the budget
        self.reprobe_after = REPROBE_AFTER_SKIPS  # skips in a row before the next probe (doubles per probe)
        self.served: EMATeacher | None = None  # in probation: the confirmed weights that predict (None = teacher)
        self.clear_since: int | None = None  # in probation: first frame of the current run of clear slow signals
        # at a look demotion: the look before the change and the weights that served in it (serve_on_look_return)
        self.look_before: torch.Tensor | None = None
        self.served_before: EMATeacher | None = None
        # and the lr backoff of that moment: the rollbacks in the changed look judged weights in that look
        self.lr_backoff_before: float | None = None
        if self.cfg.probation_at_start and self.source_check is not None:
            self.served = self.shipped  # frozen: never updated, so the shipped model itself serves
        self.frame_index = 0
        self.counters = {"frames": 0, "updates": 0, "skip_budget": 0, "skip_unhealthy": 0, "rollbacks": 0,
                         "snapshots": 0, "over_budget": 0}
        self.suspended = False
        self.last_agreement: float | None = None
        self.cost: dict[str, float | None] = {"ms_per_kpx": None, "overhead_ms": None, "dev_per_kpx": 0.0,
                                              "dev_overhead": 0.0, "tail_ms": 0.0, "save_ms": 0.0}
        self.rollback_frames: list[int] = []
        self.rollback_reasons: list[list[str]] = []  # the monitor's reasons of each rollback
        self.state_path = Path(state_path) if state_path else None
        self._candidate = None
        self._take_snapshot(confirmed=True)  # the shipped model is the first good state

    # ---- the per-frame step -------------------------------------------------------------------
    def process(self, image: np.ndarray) -> FrameResult:
        """Predict one (H,W,3) uint8 frame with the teacher, then adapt on it if healthy and in budget."""
        t0 = time.perf_counter()
        i = self.frame_index
        x = to_tensor(image)[None]
        look_shift = self.look.update(x) if self.cfg.safety.max_look_shift is not None else 0.0  # only when it acts
        if self.served is self.shipped and self._maybe_serve_on_look_return():
            look_shift = self.look.shift  # against the settled slow look: this frame is no new change
        shipped_out = None  # the shipped model's (logits, features, argmax) on this frame, when it serves
        if self.served is not None:  # probation: the output comes from the confirmed weights
            served_out = self._predict(self.served, x)
            served_pred = served_out[2]
            if self.served is self.shipped:
                shipped_out = served_out
            predict_ms = (time.perf_counter() - t0) * 1e3
            if not self._room_for_forward(t0, predict_ms):  # the teacher's forward and update wait
                self.counters["skip_budget"] += 1
                return self._finish(t0, FrameResult(i, served_pred[0].to(torch.uint8).numpy(), "skip-budget", 0.0,
                                                    predict_ms), None)
        t_logits, t_feats, pred = self._predict(self.teacher, x)
        if self.served is None:
            predict_ms = (time.perf_counter() - t0) * 1e3
            pred_np = pred[0].to(torch.uint8).numpy()
        else:
            pred_np = served_pred[0].to(torch.uint8).numpy()
            self.counters["probation_frames"] = self.counters.get("probation_frames", 0) + 1

        ready = bool(self.seen.any())
        pl_sel = kernels.consensus_select(pred, t_feats, self.centroids) if ready else pred
        kept = float((pl_sel != IGNORE_INDEX).float().mean())
        sig = frame_signals(t_logits, kept, t_feats, self.centroids, self.seen) if self.cfg.safety.enabled else None
        if sig is not None and self._shadow_due(t0, predict_ms):
            sig["kept_shipped"], sig["hist_shipped"] = self._shipped_kept(x, shipped_out)
            self.last_shadow = i
            self.counters["shadow_checks"] = self.counters.get("shadow_checks", 0) + 1
        # not on a shadow frame (it waits a frame): one extra forward per frame at most, so the p99 frame cost
        # stays where it was; with a shadow check on every frame both run
        apart = self.last_shadow != i or self.cfg.safety.shadow_every <= 1
        if sig is not None and apart and self._source_check_due(t0, predict_ms):
            with torch.no_grad():
                sig["source_drop"] = self.source_check.score(lambda img: self._predict(self.teacher, img)[2])
            self.last_source_check = i
            self.counters["source_checks"] = self.counters.get("source_checks", 0) + 1
        collapse = sig is not None and self.monitor.observe(sig, self.last_agreement)
        self.last_agreement = None
        result = FrameResult(i, pred_np, "update", 0.0, predict_ms, reasons=list(self.monitor.last_reasons))
        if sig is not None and (sig.get("source_drop") is not None or sig.get("hist_shipped") is not None):
            self._maybe_safe_snapshot()
            if self.served is not None:
                self._maybe_promote()
            elif self._serving_drop_too_high():
                self.counters["demotions"] = self.counters.get("demotions", 0) + 1
                if self.cfg.safety.serve_drop_action == "rollback":
                    collapse = True  # below: back to the safe weights, which serve in probation
                    self.monitor.last_reasons = sorted({*self.monitor.last_reasons, "source"})
                    result.reasons = list(self.monitor.last_reasons)
                else:
                    self.served, self.clear_since = self.shipped, None  # the output goes back to shipped
        bound = self.cfg.safety.max_look_shift
        if (bound is not None and self.cfg.probation and look_shift > bound and self.served is not self.shipped
                and i >= self.cfg.safety.calib_frames):  # another light or weather: shipped serves until the teacher passes
            if self.cfg.safety.serve_on_look_return and self.look.slow is not None:
                self.look_before = self.look.slow.clone()  # the slow look still holds the look before the change
                self.served_before = self.served if self.served is not None else self._frozen_copy(self.teacher.module)
                self.lr_backoff_before = self.lr_backoff
            self.served, self.clear_since = self.shipped, None
            self.counters["look_demotions"] = self.counters.get("look_demotions", 0) + 1

        if self.frame_index < self.cfg.safety.calib_frames:
            self._calibrate_centroids(t_feats, pred)
            if self.frame_index == self.cfg.safety.calib_frames - 1:
                self.shipped_centroids = self.centroids.clone()
            result.action = "calibrate"
        elif collapse:
            self._rollback(list(self.monitor.last_reasons))
            result.action = "rollback"
        else:
            if self.suspended and self.monitor.good_streak >= self.cfg.safety.recover_frames:
                self.suspended = False
            if self.suspended or (self.cfg.safety.enabled and self.monitor.last_reasons):
                self._candidate = None  # weights of a period that ended unhealthy are never "good"
                self.counters["skip_unhealthy"] += 1
                result.action = "skip-unhealthy"
            else:
                if self.frame_index % self.cfg.snapshot_every == 0:
                    self._take_snapshot()  # the weights as this healthy frame found them
                self._update_centroids(t_feats, t_logits, pl_sel)
                self.replay.add((x[0] * 255).round(), pl_sel[0], t_logits[0], i)
                if i % self.cfg.update_every or len(self.replay) < self.min_frames:
                    result.action = "skip-schedule"
                else:
                    scale, frames = self._crop_scale(t0, predict_ms, x.shape[-2] * x.shape[-1])
                    if scale == 0.0:
                        self.counters["skip_budget"] += 1
                        result.action = "skip-budget"
                    else:
                        result.update_ms = self._update(i, scale, frames)
                        result.crop_scale = scale
        return self._finish(t0, result, time.perf_counter())

    def _finish(self, t0: float, result: FrameResult, t_tail: float | None) -> FrameResult:
        """The end of every frame: counters, the cost of the work after an update, a due state save."""
        self.frame_index += 1
        self.counters["frames"] += 1
        result.signals = self.monitor.signals()
        if self.cfg.safety.max_look_shift is not None:
            result.signals["look_shift"] = self.look.shift
        if result.update_ms and t_tail is not None:  # the work after an update (signals, bookkeeping), kept as a running max-ish
            tail = (time.perf_counter() - t_tail) * 1e3
            self.cost["tail_ms"] = max(tail, 0.9 * float(self.cost.get("tail_ms") or 0.0))
        if self._checkpoint_due():
            t_save = time.perf_counter()
            self.save_state(self.state_path)
            save = (time.perf_counter() - t_save) * 1e3
            self.cost["save_ms"] = max(save, 0.7 * float(self.cost.get("save_ms") or 0.0) + 0.3 * save)
        result.total_ms = (time.perf_counter() - t0) * 1e3
        if self.cfg.budget_ms is not None and result.total_ms > self.cfg.budget_ms:
            self.counters["over_budget"] = self.counters.get("over_budget", 0) + 1
        return result

    def _frozen_copy(self, module: nn.Module) -> EMATeacher:
        """A no-grad copy that predicts (teacher, shipped, served): its folded graph stays contiguous when
        onnxruntime reads its weights."""
        return EMATeacher(module, fold_channels_last=not self.onnx_predict)

    def _frozen_copy_of(self, tensors: dict[str, torch.Tensor], prefix: str) -> EMATeacher:
        """A predicting copy with the weights a state file keeps under `prefix`."""
        copy = self._frozen_copy(self.teacher.module)
        copy.module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        return copy

    def _predict(self, model: EMATeacher, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, features, full-resolution argmax) of a frozen forward on a (1,3,H,W) frame in [0,1]."""
        xn = normalize(x, self.meta.mean, self.meta.std)
        out = self._onnx_forward(model, xn) if self.onnx_predict else None
        logits, feats = out if out is not None else model(xn)
        pred = kernels.upsample_argmax(logits, x.shape[-2:])  # fused: no full-resolution logits
        return logits, feats, pred

    @torch.no_grad()
    def _onnx_forward(self, model: EMATeacher, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(logits, features) from onnxruntime: the shipped model from its embedded-weights session, any other
        copy from the shared graph fed with its current folded weights; None when the model cannot be traced."""
        if self._onnx is None:
            graph = self.teacher.folded_graph()
            if graph is None:
                self.onnx_predict = False
                return None
            self._onnx = LiveOnnxGraph(graph, xn, ["logits", "features"])
        if model is self.shipped:
            if self._onnx_shipped is None:  # built once (and again after a resume loads other shipped weights)
                self._onnx_shipped = self._onnx.frozen(self.shipped.folded_graph())
            logits, feats = self._onnx_shipped.run(xn)
            return logits, feats
        graph = model.folded_graph()  # refreshed from the live weights, in place
        if model not in self._onnx_feeds:
            self._onnx_feeds[model] = self._onnx.feed(graph)
        logits, feats = self._onnx.run(xn, self._onnx_feeds[model])
        return logits, feats

    def _shadow_due(self, t0: float, predict_ms: float) -> bool:
        """Every `shadow_every` frames; under a budget, postponed to the next frame with room for one more
        forward (a budget below ~2.2 predictions leaves no room: then the check never runs)."""
        n = self.cfg.safety.shadow_every
        if not n or self.shipped_centroids is None or self.frame_index - self.last_shadow < n:
            return False
        return self._room_for_forward(t0, predict_ms)

    def _room_for_forward(self, t0: float, predict_ms: float) -> bool:
        """Whether one more forward (1.2 x this frame's prediction time) fits what is left of the budget."""
        if self.cfg.budget_ms is None:
            return True
        left = self.cfg.budget_ms * (1.0 - BUDGET_MARGIN) - (time.perf_counter() - t0) * 1e3
        return 1.2 * predict_ms <= left

    def _shipped_kept(self, x: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                      ) -> tuple[float, list[float]]:
        """The shipped model's consensus-kept share on this frame, with the centroids it calibrated (the
        reference the adapted teacher's own kept share is compared with: same frame, same conditions), and
        its predicted class shares at feature resolution (the class-share divergence's reference)."""
        logits, feats, pred = out if out is not None else self._predict(self.shipped, x)
        sel = kernels.consensus_select(pred, feats, self.shipped_centroids)
        hist = torch.bincount(logits.argmax(1).reshape(-1), minlength=self.num_classes).double()
        return float((sel != IGNORE_INDEX).float().mean()), (hist / hist.sum().clamp_min(1)).tolist()

    def _source_check_due(self, t0: float, predict_ms: float) -> bool:
        """Every `source_check_every` frames after calibration; under a budget, postponed to the next frame
        with room for one more forward (the held-out images are the stream's size)."""
        if self.source_check is None or self.shipped_centroids is None:
            return False
        if self.frame_index - self.last_source_check < self.cfg.source_check_every:
            return False
        return self._room_for_forward(t0, predict_ms)

    def _slow_signals_clear(self, max_drop: float | None = None) -> bool:
        """Both slow signals (shares, source_drop) within half their bounds (a bound that is off counts as clear);
        with `max_drop`, the held-out drop within that instead."""
        c, v = self.cfg.safety, self.monitor.signals()
        if c.max_share_divergence is not None and v.get("share_divergence", 0.0) > 0.5 * c.max_share_divergence:
            return False
        if c.max_source_drop is not None:
            drop = v.get("source_drop")
            if drop is None or drop > (0.5 * c.max_source_drop if max_drop is None else max_drop):
                return False
        return not self.monitor.last_reasons

    def _serving_drop_too_high(self) -> bool:
        """While the teacher serves: its held-out drop is above `safety.serve_max_source_drop`."""
        bound = self.cfg.safety.serve_max_source_drop
        drop = self.monitor.signals().get("source_drop")
        return bound is not None and self.cfg.probation and drop is not None and drop > bound

    def _maybe_safe_snapshot(self) -> None:
        """The "safe" weights a slow drift rolls back to, in two stages like the good ones: a candidate is
        taken when the slow signals are well inside their bounds, and becomes safe only when they still are
        a full source-check cycle (or 50 frames) later, so the lag of the slow signals cannot make drifted
        weights safe."""
        span = self.cfg.source_check_every * len(self.source_check) if self.source_check else 50
        if not self._slow_signals_clear():
            self._safe_candidate = None
            return
        cand = self._safe_candidate
        if cand is None:
            self._safe_candidate = self._snapshot()
        elif self.frame_index - cand["frame"] >= span:
            self._safe, self._safe_candidate = cand, self._snapshot()
            self.counters["safe_snapshots"] = self.counters.get("safe_snapshots", 0) + 1

    def _promote_span(self) -> int:
        """Frames the slow signals must stay clear in probation before the teacher serves again: two full
        held-out cycles (50 frames without a source check), so the check has scored weights that kept learning."""
        return 2 * (self.cfg.source_check_every * len(self.source_check) if self.source_check else 25)

    def _maybe_promote(self) -> None:
        """In probation: the teacher serves again once the held-out drop stayed at most
        `safety.promote_max_source_drop` and the share divergence within half its bound for `_promote_span`
        frames in a row (measured on the teacher, while it kept learning), in a steady look (`max_look_shift`)."""
        bound = self.cfg.safety.max_look_shift
        if not self._slow_signals_clear(self.cfg.safety.promote_max_source_drop) or (
                bound is not None and self.look.shift > bound):  # and only in a steady look
            self.clear_since = None
            return
        if self.clear_since is None:
            self.clear_since = self.frame_index
        elif self.frame_index - self.clear_since >= self._promote_span():
            self.served, self.clear_since = None, None
            self.look_before = self.served_before = self.lr_backoff_before = None  # confirmed in the look of now
            self.counters["promotions"] = self.counters.get("promotions", 0) + 1

    def _maybe_serve_on_look_return(self) -> bool:
        """The shipped model serves since a look change: once the fast look is back within `max_look_shift` of
        the look before the change, the weights that served then serve again (still in probation, so the
        promotion rule decides when the teacher takes over), and the lr backoff returns to what it was then: the
        rollbacks in the changed look found weights wanting in that look, and without this a long dusk halves the
        lr to nothing for the rest of the drive. The feature-distance reference, which follows healthy frames,
        followed the changed look; it is measured again (otherwise the way back reads as a distance violation,
        and a rollback cannot change the input: a judged dusk stream rolled back every 2nd frame after its
        return). True when they do."""
        bound = self.cfg.safety.max_look_shift
        if (bound is None or self.look_before is None or self.served_before is None
                or self.look.gap_to(self.look_before) > bound):
            return False
        self.look.settle(self.look_before)
        self.monitor.rebase_distance()  # the distance reference followed the changed look: measure it again
        self.served, self.clear_since = self.served_before, None
        if self.lr_backoff_before is not None and self.lr_backoff < self.lr_backoff_before:
            self.lr_backoff = self.lr_backoff_before
            self._set_lr()
        self.look_before = self.served_before = self.lr_backoff_before = None
        self.counters["look_returns"] = self.counters.get("look_returns", 0) + 1
        return True

    def _checkpoint_due(self) -> bool:
        """Whether the frame being finished (frame_index already advanced) ends with a state save."""
        return bool(self.state_path and self.cfg.checkpoint_every
                    and self.frame_index % self.cfg.checkpoint_every == 0)

    # ---- pieces ---------------------------------------------------------------------------------
    def _calibrate_centroids(self, feats: torch.Tensor, pred: torch.Tensor) -> None:
        """During the first frames: centroids = exact running mean of the shipped model's features."""
        lab = labels_at(pred, tuple(feats.shape[-2:]))
        sums, counts = kernels.centroid_sums(feats.float(), lab, self.num_classes)
        self._calib_sums += sums.sum(0).double()
        self.pixel_counts += counts.sum(0).double()
        seen = self.pixel_counts > 0
        self.centroids = torch.where(seen[:, None], (self._calib_sums / self.pixel_counts.clamp_min(1)[:, None]).float(),
                                     torch.full_like(self.centroids, FAR))
        self.seen = seen

    def _update_centroids(self, feats: torch.Tensor, t_logits: torch.Tensor, pl_sel: torch.Tensor) -> None:
        lab = labels_at(pl_sel, tuple(feats.shape[-2:])).long()
        lab = torch.where(lab == t_logits.argmax(1), lab, torch.full_like(lab, IGNORE_INDEX))
        means, valid = class_means(feats, lab, self.num_classes)
        self.centroids, self.seen = momentum_update(self.centroids, self.seen, means, valid, self.cfg.centroid_momentum)
        self.pixel_counts += torch.bincount(lab[lab != IGNORE_INDEX].reshape(-1), minlength=self.num_classes).double()

    def _crop_hw(self, scale: float, h: int, w: int) -> tuple[int, int]:
        ch, cw = min(self.cfg.crop[0], h), min(self.cfg.crop[1], w)
        f = scale ** 0.5
        return max(8, int(ch * f) // 8 * 8), max(8, int(cw * f) // 8 * 8)

    def _crop_scale(self, t0: float, predict_ms: float, frame_px: int) -> tuple[float, int]:
        """(crop scale, frames): the largest crop of the ladder whose planned update cost fits the rest of the
        budget (scale 0 = skip), or one probe update (smallest crop, the fewest frames the model trains on) that
        measures the real cost: when nothing is measured yet and no crop fits the prior, or after
        `reprobe_after` budget skips in a row."""
        budget = self.cfg.budget_ms
        if budget is None:
            return 1.0, self.frames_per_update
        left = budget * (1.0 - BUDGET_MARGIN) - (time.perf_counter() - t0) * 1e3 - float(self.cost.get("tail_ms") or 0.0)
        if self.state_path and self.cfg.checkpoint_every and (self.frame_index + 1) % self.cfg.checkpoint_every == 0:
            left -= float(self.cost.get("save_ms") or 0.0)  # this frame also saves the state
        h, w = self.replay.images[-1].shape[-2:]
        b = min(self.frames_per_update, len(self.replay))
        prior = PRIOR_FB_FACTOR * predict_ms / (frame_px / 1e3)
        scale = self.plan_crop(left, h, w, b, prior_ms_per_kpx=prior)
        if scale == 0.0 and self.cfg.budget_probe and left > 0.0:
            first = self.cost["ms_per_kpx"] is None and not self.probed
            again = self.cost["ms_per_kpx"] is not None and self.budget_skips_in_row >= self.reprobe_after
            if first or again:
                if again:  # the probe measures the cost anew: a blend with a stale estimate decays too slowly
                    self.reprobe_after *= 2
                    self.cost.update(ms_per_kpx=None, overhead_ms=None, dev_per_kpx=0.0, dev_overhead=0.0)
                self.probed, self.budget_skips_in_row = True, 0
                self.counters["probes"] = self.counters.get("probes", 0) + 1
                return CROP_LADDER[-1], self.min_frames
        if scale == 0.0:
            self.budget_skips_in_row += 1
        else:
            self.budget_skips_in_row, self.reprobe_after = 0, REPROBE_AFTER_SKIPS
        return scale, self.frames_per_update

    def plan_crop(self, left_ms: float, h: int, w: int, b: int, prior_ms_per_kpx: float) -> float:
        """Pure planning step (tested on its own): the largest ladder scale whose planned cost (the measured
        mean plus BUDGET_DEVIATIONS mean absolute deviations) <= left_ms."""
        c = self.cost
        if c["ms_per_kpx"] is None:  # nothing measured yet: the prior, 1.5x for safety (overhead folded in)
            per_kpx, overhead = 1.5 * prior_ms_per_kpx, 0.0
        else:
            per_kpx = float(c["ms_per_kpx"]) + BUDGET_DEVIATIONS * float(c.get("dev_per_kpx") or 0.0)
            overhead = float(c["overhead_ms"]) + BUDGET_DEVIATIONS * float(c.get("dev_overhead") or 0.0)
        for s in CROP_LADDER:
            ch, cw = self._crop_hw(s, h, w)
            if overhead + per_kpx * 2 * b * ch * cw / 1e3 <= left_ms:  # strong + mixed view per crop
                return s
        return 0.0

    def _update(self, i: int, scale: float, frames: int | None = None) -> float:
        """Forward and backward on the current frame + replayed ones (`frames` in all, default
        batch_frames / update_spread), then the optimizer step once update_spread frames have accumulated
        their gradients; returns its wall time (ms)."""
        t0 = time.perf_counter()
        seed = int(step_rng(self.cfg.seed, i, "online").integers(2**62))
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed + 1)  # dropout
        idx = [len(self.replay) - 1] + self.replay.sample((frames or self.frames_per_update) - 1, gen)
        h, w = self.replay.images[-1].shape[-2:]
        ch, cw = self._crop_hw(scale, h, w)
        rng = step_rng(self.cfg.seed, i, "online-crop")
        xs, ys, ts = [], [], []
        for k in idx:
            top = int(rng.integers(0, (h - ch) // 8 + 1)) * 8
            left = int(rng.integers(0, (w - cw) // 8 + 1)) * 8
            xs.append(self.replay.images[k][:, top:top + ch, left:left + cw])
            ys.append(self.replay.labels[k][top:top + ch, left:left + cw])
            ts.append(self.replay.logits[k][:, top // 8:(top + ch) // 8, left // 8:(left + cw) // 8])
        x = torch.stack(xs).float().div_(255.0)
        y = torch.stack(ys).long()
        t_clean = torch.stack(ts).float()
        b = x.shape[0]
        x_aug = self.strong(x, self.cfg.aug_beta, seed + 2)
        if self.source is not None:  # DiGA's source->target ClassMix: source classes (with ground truth) on target
            x_src, y_src = self.source.crops(b, (ch, cw), step_rng(self.cfg.seed, i, "online-source"))
            x_mix, y_mix = source_to_target_classmix(x_src, y_src, x_aug, y, self.num_classes, gen)
        elif b > 1:  # frame-to-frame ClassMix: half of each frame's classes pasted onto the next frame
            chosen = kernels.choose_classes(y, self.num_classes, gen)
            x_mix, y_mix = kernels.class_mix(x_aug, x_aug.roll(1, 0), y, y.roll(1, 0), chosen)
        else:
            x_mix, y_mix = x_aug, y
        t_fb = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.update_bf16), \
                _bn_statistics_from(self.student, x if self.cfg.bn == "adapt" else None, self.meta):
            logits, _ = self.student(normalize(torch.cat([x_aug, x_mix]), self.meta.mean, self.meta.std))
        logits = logits.float()
        s_aug = logits[:b]
        if tuple(s_aug.shape[-2:]) != tuple(t_clean.shape[-2:]):
            s_aug = F.interpolate(s_aug, size=t_clean.shape[-2:], mode="bilinear", align_corners=False)
        loss_kd = -(torch.softmax(t_clean, 1) * torch.log_softmax(s_aug, 1)).sum(1).mean()
        loss = seg_loss(logits[b:], y_mix) + self.cfg.lambda_distil * loss_kd
        if self.accumulated == 0:
            self.optimizer.zero_grad(set_to_none=True)
        (loss / self.cfg.update_spread).backward()
        fb_ms = (time.perf_counter() - t_fb) * 1e3
        self.accumulated += 1
        if self.accumulated == self.cfg.update_spread:
            self.accumulated = 0
            self._set_lr()
            self.optimizer.step()
            if self.cfg.restore_prob > 0:
                self._restore(gen)
            self.teacher.update(self.student, step=10**9, max_decay=self.cfg.ema_decay)  # constant decay
        self.last_agreement = float((s_aug[0].argmax(0) == t_clean[0].argmax(0)).float().mean())
        total = (time.perf_counter() - t0) * 1e3
        kpx = 2 * b * ch * cw / 1e3
        per_kpx, overhead = fb_ms / kpx, total - fb_ms
        a = 0.3
        c = self.cost
        if c["ms_per_kpx"] is None:
            c["ms_per_kpx"], c["overhead_ms"], c["dev_per_kpx"], c["dev_overhead"] = per_kpx, overhead, 0.0, 0.0
        else:  # running mean and running mean absolute deviation of both terms
            c["dev_per_kpx"] = (1 - a) * float(c.get("dev_per_kpx") or 0.0) + a * abs(per_kpx - c["ms_per_kpx"])
            c["dev_overhead"] = (1 - a) * float(c.get("dev_overhead") or 0.0) + a * abs(overhead - c["overhead_ms"])
            c["ms_per_kpx"] = (1 - a) * c["ms_per_kpx"] + a * per_kpx
            c["overhead_ms"] = (1 - a) * c["overhead_ms"] + a * overhead
        self.counters["updates"] += 1
        return total

    def lr_gate(self) -> float:
        """The shadow gate's factor in [0, 1] (1 when `lr_gate` is off or no shadow check ran yet)."""
        if self.cfg.lr_gate is None:
            return 1.0
        lo, hi = self.cfg.lr_gate
        ratio = float(self.monitor.smooth.get("kept_vs_shipped", 1.0))
        return min(1.0, max(0.0, (ratio - lo) / max(hi - lo, 1e-9)))

    def _set_lr(self) -> None:
        """lr of every parameter group = cfg.lr x its multiplier x the rollback back-off x the shadow gate x warm-up."""
        lr = self.cfg.lr * self.lr_backoff * self.lr_gate()
        if self.cfg.lr_warmup:
            lr *= min(1.0, (self.counters["updates"] + 1) / self.cfg.lr_warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)

    def _drop_accumulated(self) -> None:
        """Forget the gradients of an update not finished yet (its frames were taken on other weights)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.accumulated = 0

    @torch.no_grad()
    def _restore(self, gen: torch.Generator) -> None:
        """Stochastic restore: each student weight goes back to the shipped value with prob `restore_prob`."""
        pairs = [(p, s) for p, s in zip(self.student.parameters(), self.shipped.module.parameters(), strict=True)
                 if p.requires_grad]  # frozen weights are the shipped ones already
        prob = self.cfg.restore_prob
        if prob >= SPARSE_RESTORE_BELOW:
            for p, s in pairs:
                keep = torch.rand(p.shape, generator=gen) >= prob
                p.copy_(torch.where(keep, p, s))
            return
        # a few weights: draw which ones (uniform positions over all weights, in memory order), not a mask of all
        sizes = [p.numel() for p, _ in pairs]
        idx = bernoulli_positions(sum(sizes), prob, gen)
        starts = np.cumsum([0] + sizes)
        bounds = np.searchsorted(idx.numpy(), starts).tolist()
        for (p, s), start, lo, hi in zip(pairs, starts[:-1].tolist(), bounds[:-1], bounds[1:], strict=True):
            if hi > lo:
                pos = idx[lo:hi] - start
                src = s if s.stride() == p.stride() else torch.empty_like(p).copy_(s)
                _flat(p)[pos] = _flat(src)[pos]

    def _snapshot(self) -> dict[str, Any]:
        return {"student": _state(self.student), "teacher": _state(self.teacher.module),
                "centroids": self.centroids.clone(), "seen": self.seen.clone(), "frame": self.frame_index}

    def _take_snapshot(self, confirmed: bool = False) -> None:
        """Two stages: a snapshot becomes the "last good" weights only after a further `snapshot_every`
        frames passed healthy (a collapse shows in the signals a few frames after it starts)."""
        snap = self._snapshot()
        if confirmed:
            self._good, self._candidate = snap, None
            self._safe, self._safe_candidate = snap, None
            return
        if self._candidate is not None:
            self._good = self._candidate
            self.counters["snapshots"] += 1
        self._candidate = snap

    def _rollback(self, reasons: list[str] | None = None) -> None:
        """Restore the last good weights and centroids (the last safe ones when a slow signal called it),
        forget the replay buffer and optimizer momentum; when the model itself went wrong (not the input),
        learn more slowly from here on."""
        if set(reasons or ()) & MODEL_FAILURES:
            self.lr_backoff *= self.cfg.rollback_lr_factor
            self._set_lr()
        if set(reasons or ()) & SLOW_FAILURES:
            self._good, self._safe_candidate = self._safe, None
            self.counters["safe_rollbacks"] = self.counters.get("safe_rollbacks", 0) + 1
        if self.source_check is not None:
            self.source_check.reset()
        self.student.load_state_dict(self._good["student"])
        self.teacher.module.load_state_dict(self._good["teacher"])
        if set(reasons or ()) & SLOW_FAILURES and self.cfg.probation and self.served is None:
            self.served = self._frozen_copy(self.teacher.module)  # probation: these serve until the teacher passes
            self.counters["probations"] = self.counters.get("probations", 0) + 1
        self.clear_since = None
        self.centroids, self.seen = self._good["centroids"].clone(), self._good["seen"].clone()
        self.optimizer.state.clear()
        self._drop_accumulated()
        self.replay.clear()
        self._candidate = None
        self.monitor.after_rollback()
        self.suspended = True
        self.counters["rollbacks"] += 1
        self.rollback_frames.append(self.frame_index)
        self.rollback_reasons.append(sorted(reasons or ()))

    # ---- the adapted model ----------------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        """The model that predicts: the teacher (eval mode)."""
        return self.teacher.module

    def save_model(self, path: str | Path) -> Path:
        """The current teacher as a regular checkpoint (loadable, exportable, servable)."""
        meta = self.meta.model_copy(update={"stage": f"online@{self.frame_index}",
                                            "extra": {**self.meta.extra, "online_frames": self.frame_index,
                                                      "online_updates": self.counters["updates"]}})
        return save_checkpoint(self.teacher.module, path, meta)

    def summary(self) -> dict[str, Any]:
        return {**self.counters, "frame_index": self.frame_index, "rollback_frames": list(self.rollback_frames),
                "rollback_reasons": [list(r) for r in self.rollback_reasons],
                "lr_backoff": self.lr_backoff, "lr_gate": self.lr_gate(),
                "cost_model": dict(self.cost), "centroid_pixels": self.pixel_counts.tolist()}

    # ---- fleet hooks: weights and centroids in and out ---------------------------------------------
    def weights(self) -> dict[str, torch.Tensor]:
        """The teacher's state dict (what the fleet averages)."""
        return _state(self.teacher.module)

    def load_weights(self, state: dict[str, torch.Tensor], centroids: torch.Tensor | None = None,
                     seen: torch.Tensor | None = None) -> None:
        """Take the fleet's weights (and centroids): the teacher becomes the fleet model and the student
        moves by the same correction, so it keeps its lead over the teacher. Resetting the student to
        the (lagging) teacher every round threw away what it had learned since: measured, one vehicle
        fed back its own teacher each 50-frame round fell 25.7 -> 25.4 -> 24.6 target-val mIoU, where
        the same rounds without the reset went 25.7 -> 26.6 -> 27.3."""
        own = self.teacher.module.state_dict()
        student = self.student.state_dict()
        moved = {k: (student[k] + (state[k].to(v.dtype) - own[k])) if v.is_floating_point() else state[k].to(v.dtype)
                 for k, v in student.items()}
        self.student.load_state_dict(moved)
        self.teacher.module.load_state_dict(state)
        self._drop_accumulated()  # gradients of the weights it had before
        if centroids is not None:
            self.centroids = centroids.float().clone()
            self.seen = seen.bool().clone() if seen is not None else (centroids < FAR / 2).all(1)
            self.monitor.rebase_distance()  # distances to other centroids: measure the reference again
        self._take_snapshot(confirmed=True)

    # ---- state: one file, atomic ------------------------------------------------------------------
    def save_state(self, path: str | Path) -> Path:
        """Everything needed to continue, in one safetensors file written atomically."""
        tensors: dict[str, torch.Tensor] = {}
        for prefix, sd in (("student.", self.student.state_dict()), ("teacher.", self.teacher.module.state_dict()),
                           ("shipped.", self.shipped.module.state_dict()),
                           ("good.student.", self._good["student"]), ("good.teacher.", self._good["teacher"])):
            tensors.update({prefix + k: v.detach().cpu().contiguous() for k, v in sd.items()})
        opt = self.optimizer.state_dict()
        for pid, pstate in opt["state"].items():
            for k, v in pstate.items():
                if torch.is_tensor(v):
                    tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
        tensors.update({"centroids": self.centroids.contiguous(), "seen": self.seen.to(torch.uint8),
                        "good.centroids": self._good["centroids"].contiguous(),
                        "good.seen": self._good["seen"].to(torch.uint8), "pixel_counts": self.pixel_counts,
                        "calib_sums": self._calib_sums})
        safe_is_good = self._safe is self._good  # one set of tensors (safetensors refuses shared memory)
        if not safe_is_good:
            for part in ("student", "teacher"):
                tensors.update({f"safe.{part}.{k}": v.contiguous() for k, v in self._safe[part].items()})
            tensors.update({"safe.centroids": self._safe["centroids"].contiguous(),
                            "safe.seen": self._safe["seen"].to(torch.uint8)})
        if self.shipped_centroids is not None:
            tensors["shipped_centroids"] = self.shipped_centroids.contiguous()
        if self._safe_candidate is not None:
            for part in ("student", "teacher"):
                tensors.update({f"safecand.{part}.{k}": v.contiguous() for k, v in self._safe_candidate[part].items()})
            tensors.update({"safecand.centroids": self._safe_candidate["centroids"].contiguous(),
                            "safecand.seen": self._safe_candidate["seen"].to(torch.uint8)})
        if self.source_check is not None:
            tensors.update(self.source_check.tensors())
        if self.served is not None and self.served is not self.shipped:
            tensors.update({f"served.{k}": v.detach().cpu().contiguous() for k, v in self.served.module.state_dict().items()})
        if self.served_before is not None:
            tensors.update({f"before.{k}": v.detach().cpu().contiguous()
                            for k, v in self.served_before.module.state_dict().items()})
        if self._candidate is not None:
            for part in ("student", "teacher"):
                tensors.update({f"cand.{part}.{k}": v.contiguous() for k, v in self._candidate[part].items()})
            tensors.update({"cand.centroids": self._candidate["centroids"].contiguous(),
                            "cand.seen": self._candidate["seen"].to(torch.uint8)})
        tensors.update(self.replay.tensors())
        if self.accumulated:  # an update half done: its accumulated gradients
            tensors.update({f"grad.{k}": p.grad.detach().contiguous() for k, p in self.student.named_parameters()
                            if p.grad is not None})
        info = {"version": STATE_VERSION, "frame_index": self.frame_index, "counters": self.counters,
                "accumulated": self.accumulated,
                "suspended": self.suspended, "last_agreement": self.last_agreement, "cost": self.cost,
                "rollback_frames": self.rollback_frames, "rollback_reasons": self.rollback_reasons, "good_frame": self._good["frame"],
                "last_shadow": self.last_shadow, "lr_backoff": self.lr_backoff, "safe_frame": self._safe["frame"], "safe_is_good": safe_is_good,
                "safe_candidate_frame": None if self._safe_candidate is None else self._safe_candidate["frame"],
                "last_source_check": self.last_source_check, "probed": self.probed, "probation": self.served is not None,
                "served_is_shipped": self.served is self.shipped,
                "budget_skips_in_row": self.budget_skips_in_row, "reprobe_after": self.reprobe_after,
                "clear_since": self.clear_since,
                "look_before": None if self.look_before is None else self.look_before.tolist(),
                "lr_backoff_before": self.lr_backoff_before,
                "source_check_next": self.source_check.next if self.source_check is not None else 0,
                "candidate_frame": None if self._candidate is None else self._candidate["frame"],
                "monitor": self.monitor.state(), "look": self.look.state(), "replay_frames": self.replay.frame_ids,
                "optim_param_groups": opt["param_groups"], "config": self.cfg.model_dump(mode="json"),
                "meta": self.meta.model_dump(mode="json")}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"diga_online_state": json.dumps(info)})
        return Path(path)

    @classmethod
    def resume(cls, path: str | Path, cfg: OnlineConfig | None = None) -> OnlineAdapter:
        """Rebuild an adapter from `save_state`'s file; `cfg` defaults to the saved config."""
        p = Path(path)
        if not p.is_file():
            raise DigaError(f"online state {p} not found; start without --resume or point --state at the file")
        try:
            with safe_open(str(p), framework="pt") as f:
                info = json.loads((f.metadata() or {})["diga_online_state"])
            t = load_file(str(p))
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            raise DigaError(f"online state {p} is unreadable ({exc}); delete it to start over") from None
        if info.get("version") != STATE_VERSION:
            raise DigaError(f"online state {p} has version {info.get('version')}, expected {STATE_VERSION}")
        meta = ModelMeta.model_validate(info["meta"])
        model = build_model(meta.model_name, meta.num_classes, **meta.model_options)
        load_weights(model, {k[8:]: v for k, v in t.items() if k.startswith("student.")})
        self = cls(model, cfg or OnlineConfig.model_validate(info["config"]), meta=meta, state_path=p)
        self.teacher.module.load_state_dict({k[8:]: v for k, v in t.items() if k.startswith("teacher.")})
        self.shipped.module.load_state_dict({k[8:]: v for k, v in t.items() if k.startswith("shipped.")})
        self._onnx_shipped = None
        self.shipped_centroids = t.get("shipped_centroids")
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in t.items():
            if k.startswith("optim."):
                _, pid, key = k.split(".", 2)
                state.setdefault(int(pid), {})[key] = v
        self.optimizer.load_state_dict({"state": state, "param_groups": info["optim_param_groups"]})
        self.accumulated = int(info.get("accumulated", 0))
        for k, p in self.student.named_parameters():
            if f"grad.{k}" in t:
                p.grad = torch.empty_like(p).copy_(t[f"grad.{k}"])  # the parameter's memory layout
        self.centroids, self.seen = t["centroids"], t["seen"].bool()
        self.pixel_counts, self._calib_sums = t["pixel_counts"], t["calib_sums"]
        self._good = {"student": {k[13:]: v for k, v in t.items() if k.startswith("good.student.")},
                      "teacher": {k[13:]: v for k, v in t.items() if k.startswith("good.teacher.")},
                      "centroids": t["good.centroids"], "seen": t["good.seen"].bool(), "frame": info["good_frame"]}
        self._safe = self._good
        if "safe_frame" in info and not info.get("safe_is_good"):
            self._safe = {"student": {k[13:]: v for k, v in t.items() if k.startswith("safe.student.")},
                          "teacher": {k[13:]: v for k, v in t.items() if k.startswith("safe.teacher.")},
                          "centroids": t["safe.centroids"], "seen": t["safe.seen"].bool(), "frame": info["safe_frame"]}
        self._safe_candidate = None
        if info.get("safe_candidate_frame") is not None:
            self._safe_candidate = {"student": {k[17:]: v for k, v in t.items() if k.startswith("safecand.student.")},
                                    "teacher": {k[17:]: v for k, v in t.items() if k.startswith("safecand.teacher.")},
                                    "centroids": t["safecand.centroids"], "seen": t["safecand.seen"].bool(),
                                    "frame": info["safe_candidate_frame"]}
        self.last_source_check = info.get("last_source_check", -(10**9))
        self.probed = info.get("probed", False)
        self.budget_skips_in_row = info.get("budget_skips_in_row", 0)
        self.reprobe_after = info.get("reprobe_after", REPROBE_AFTER_SKIPS)
        self.served, self.clear_since = None, info.get("clear_since")
        if info.get("probation") and info.get("served_is_shipped"):
            self.served = self.shipped
        elif info.get("probation"):
            self.served = self._frozen_copy_of(t, "served.")
        if info.get("look_before") is not None and any(k.startswith("before.") for k in t):
            self.look_before = torch.tensor(info["look_before"], dtype=torch.float64)
            self.served_before = self._frozen_copy_of(t, "before.")
            self.lr_backoff_before = info.get("lr_backoff_before")
        if self.source_check is not None:
            self.source_check.load(t, info.get("source_check_next", 0))
        self._candidate = None
        if info.get("candidate_frame") is not None:
            self._candidate = {"student": {k[13:]: v for k, v in t.items() if k.startswith("cand.student.")},
                               "teacher": {k[13:]: v for k, v in t.items() if k.startswith("cand.teacher.")},
                               "centroids": t["cand.centroids"], "seen": t["cand.seen"].bool(),
                               "frame": info["candidate_frame"]}
        self.replay.load(t, info["replay_frames"])
        self.monitor.load(info["monitor"])
        if "look" in info:
            self.look.load(info["look"])
        self.frame_index, self.counters = info["frame_index"], info["counters"]
        self.suspended, self.last_agreement = info["suspended"], info["last_agreement"]
        self.cost, self.rollback_frames = info["cost"], info["rollback_frames"]
        self.rollback_reasons = info.get("rollback_reasons", [[] for _ in self.rollback_frames])
        self.last_shadow = info["last_shadow"]
        group = info["optim_param_groups"][0]  # files without the key kept the back-off in the lr itself
        self.lr_backoff = float(info.get("lr_backoff", group["lr"] / (self.cfg.lr * group.get("lr_mult", 1.0))))
        return self


def open_adapter(checkpoint: str | Path, cfg: OnlineConfig | None = None, state: str | Path | None = None,
                 resume: bool = False) -> OnlineAdapter:
    """A fresh adapter from a checkpoint, or (with `resume` and an existing `state`) the saved one."""
    if resume and state is not None and Path(state).is_file():
        return OnlineAdapter.resume(state, cfg)
    model, meta = load_checkpoint(checkpoint, fold=True)
    return OnlineAdapter(model, cfg, meta=meta, state_path=state)


__all__ = ["FrameResult", "OnlineAdapter", "OnlineConfig", "open_adapter"]
