"""The public ops: validate the inputs, pick a backend by the tensors' device, run it.

Backends: `triton` (CUDA tensors; CPU tensors only under TRITON_INTERPRET=1, for tests), `cpu` (the
numba fast path, `cpu.py`), `reference` (the specification, `reference.py`). The environment
variable DIGA_KERNELS=auto|reference|cpu|triton is read on every call (default auto: CUDA -> triton,
CPU -> cpu). Only the loss is differentiable (a fused autograd Function); the other ops are
selections and statistics and run under no_grad. Nothing is probed or imported at import time:
triton and numba are looked up by name (`importlib.util.find_spec`) on first use and imported only
by the backend that runs.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from functools import cache

import torch

from ..errors import DigaError
from . import reference as ref

log = logging.getLogger(__name__)

BACKENDS = ("auto", "reference", "cpu", "triton")
_warned: set[str] = set()


@cache
def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def backend_for(t: torch.Tensor) -> str:
    """The backend an op on tensor `t` runs with, given DIGA_KERNELS and what is installed."""
    mode = os.environ.get("DIGA_KERNELS", "auto").strip().lower() or "auto"
    if mode not in BACKENDS:
        raise DigaError(f"DIGA_KERNELS={mode!r} is not a kernel backend: use one of {', '.join(BACKENDS)}")
    device = t.device.type
    if mode == "reference":
        return "reference"
    if mode == "triton":
        if not _installed("triton"):
            raise DigaError("DIGA_KERNELS=triton but triton is not installed: pip install 'diga-sdk[kernels]'")
        if device != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise DigaError(f"DIGA_KERNELS=triton on {device} tensors needs TRITON_INTERPRET=1 (Triton's "
                            "interpreter); unset DIGA_KERNELS to use the CPU fast path")
        return "triton"
    if mode == "cpu" and device != "cpu":
        raise DigaError(f"DIGA_KERNELS=cpu but the tensors are on {device}: move them to the CPU or unset DIGA_KERNELS")
    if device == "cuda":
        if _installed("triton"):
            return "triton"
        _warn_once("triton is not installed: CUDA kernels fall back to the PyTorch reference "
                   "(pip install 'diga-sdk[kernels]' for the fused Triton kernels)")
        return "reference"
    if device == "cpu":
        if _installed("numba"):
            return "cpu"
        _warn_once("numba is not installed: CPU kernels fall back to the PyTorch reference (pip install numba)")
        return "reference"
    return "reference"


def _impl(backend: str):
    """The module holding the backend's `<op>_<suffix>` functions."""
    if backend == "triton":
        from . import triton_ops

        return triton_ops
    from . import cpu

    return cpu


# --- input checks: one DigaError naming the argument and the fix ------------------------------------


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise DigaError(message)


def _integer(t: torch.Tensor, name: str) -> None:
    _need(not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool,
          f"{name} must be an integer label tensor, got {t.dtype}: cast it with .long() (or .to(torch.uint8))")


def _floating(t: torch.Tensor, name: str) -> None:
    _need(t.is_floating_point(), f"{name} must be a floating-point tensor, got {t.dtype}: cast it with .float()")


def _same_device(*tensors: torch.Tensor) -> None:
    devices = {str(t.device) for t in tensors}
    _need(len(devices) == 1, f"kernel inputs are on different devices ({', '.join(sorted(devices))}): move them to one")


# --- the ops ------------------------------------------------------------------------------------------


@torch.no_grad()
def consensus_select(pseudo_labels: torch.Tensor, features: torch.Tensor, centroids: torch.Tensor,
                     ignore_index: int = 255) -> torch.Tensor:
    """Keep each pseudo-label where it equals the centroid (feature) label, else ignore_index (B,H,W)."""
    _need(pseudo_labels.dim() == 3, f"pseudo_labels must be (B,H,W), got shape {tuple(pseudo_labels.shape)}")
    _need(features.dim() == 4, f"features must be (B,D,h,w), got shape {tuple(features.shape)}")
    _need(centroids.dim() == 2 and centroids.shape[1] == features.shape[1],
          f"centroids must be (C,D) with D={features.shape[1]} like the features, got {tuple(centroids.shape)}")
    _need(features.shape[0] == pseudo_labels.shape[0],
          f"features batch {features.shape[0]} != pseudo_labels batch {pseudo_labels.shape[0]}")
    _need(centroids.shape[0] > 0, "centroids must hold at least one class")
    _integer(pseudo_labels, "pseudo_labels")
    _floating(features, "features")
    _floating(centroids, "centroids")
    _same_device(pseudo_labels, features, centroids)
    if pseudo_labels.numel() == 0:
        return pseudo_labels.clone()
    backend = backend_for(features)
    if backend == "reference":
        return ref.consensus_select_ref(pseudo_labels, features, centroids, ignore_index)
    impl = _impl(backend)
    fn = impl.consensus_select_triton if backend == "triton" else impl.consensus_select_cpu
    return fn(pseudo_labels, features, centroids, ignore_index)


def _check_chosen(chosen: torch.Tensor, batch: int) -> None:
    _need(chosen.dim() == 2 and chosen.shape[0] == batch,
          f"chosen must be (B,K) with B={batch}, got shape {tuple(chosen.shape)}")
    _need(chosen.dtype == torch.bool, f"chosen must be a bool tensor (from choose_classes), got {chosen.dtype}")
    _need(chosen.shape[1] > 0, "chosen must have one column per class id (K > 0): build it with choose_classes")


@torch.no_grad()
def class_mix(img_a: torch.Tensor, img_b: torch.Tensor, label_a: torch.Tensor, label_b: torch.Tensor,
              chosen: torch.Tensor, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels of A whose label is chosen (or ignore) over image B: (mixed_img, mixed_label)."""
    _need(img_a.dim() == 4 and img_a.shape == img_b.shape,
          f"img_a and img_b must both be (B,3,H,W), got {tuple(img_a.shape)} and {tuple(img_b.shape)}")
    b, _, h, w = img_a.shape
    _need(label_a.shape == (b, h, w) and label_b.shape == (b, h, w),
          f"label_a and label_b must be (B,H,W)={(b, h, w)}, got {tuple(label_a.shape)} and {tuple(label_b.shape)}")
    _check_chosen(chosen, b)
    _floating(img_a, "img_a")
    _floating(img_b, "img_b")
    _integer(label_a, "label_a")
    _integer(label_b, "label_b")
    _same_device(img_a, img_b, label_a, label_b, chosen)
    if img_a.numel() == 0:
        return ref.class_mix_ref(img_a, img_b, label_a, label_b, chosen, ignore_index)
    backend = backend_for(img_a)
    if backend == "reference":
        return ref.class_mix_ref(img_a, img_b, label_a, label_b, chosen, ignore_index)
    impl = _impl(backend)
    fn = impl.class_mix_triton if backend == "triton" else impl.class_mix_cpu
    return fn(img_a, img_b, label_a, label_b, chosen, ignore_index)


@torch.no_grad()
def choose_classes(labels: torch.Tensor, num_classes: int, generator: torch.Generator | None = None,
                   ignore_index: int = 255) -> torch.Tensor:
    """(B,num_classes) bool: floor(n/2) of the n classes present per sample, at random (generator-reproducible)."""
    _need(labels.dim() >= 2, f"labels must be (B,H,W), got shape {tuple(labels.shape)}")
    _need(int(num_classes) > 0, f"num_classes must be positive, got {num_classes}")
    _integer(labels, "labels")
    backend = backend_for(labels)
    if backend == "reference" or labels.numel() == 0:
        present = ref.class_presence_ref(labels, int(num_classes), ignore_index)
    else:
        impl = _impl(backend)
        fn = impl.class_presence_triton if backend == "triton" else impl.class_presence_cpu
        present = fn(labels, int(num_classes), ignore_index)
    return ref.pick_half(present, generator)


@torch.no_grad()
def centroid_sums(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                  ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample per-class feature sums (B,C,D) float32 and pixel counts (B,C) int64, one pass."""
    _need(features.dim() == 4, f"features must be (B,D,h,w), got shape {tuple(features.shape)}")
    b, _, h, w = features.shape
    _need(labels.shape == (b, h, w),
          f"labels must be at feature resolution (B,h,w)={(b, h, w)}, got {tuple(labels.shape)}: "
          "downsample them (nearest) to the feature size first")
    _need(int(num_classes) > 0, f"num_classes must be positive, got {num_classes}")
    _floating(features, "features")
    _integer(labels, "labels")
    _same_device(features, labels)
    backend = backend_for(features)
    if backend == "reference" or features.numel() == 0:
        return ref.centroid_sums_ref(features, labels, int(num_classes), ignore_index)
    impl = _impl(backend)
    fn = impl.centroid_sums_triton if backend == "triton" else impl.centroid_sums_cpu
    return fn(features, labels, int(num_classes), ignore_index)


_LABEL_DTYPES = {torch.uint8: 256, torch.int16: 2**15, torch.int32: 2**31, torch.int64: 2**63}


@torch.no_grad()
def upsample_argmax(logits: torch.Tensor, size: tuple[int, int] | torch.Size,
                    dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """(B,C,h,w) logits -> (B,H,W) labels: argmax of the bilinear (align_corners=False) upsampling to
    `size`, fused so the (B,C,H,W) upsampled logits are never formed; ties go to the lowest class."""
    _need(logits.dim() == 4, f"logits must be (B,C,h,w), got shape {tuple(logits.shape)}")
    _floating(logits, "logits")
    _need(logits.shape[1] > 0, "logits must hold at least one class (C > 0)")
    _need(len(size) == 2 and all(int(s) > 0 for s in size),
          f"size must be (H, W) with positive sides, got {tuple(size)}: pass the image's spatial size")
    _need(dtype in _LABEL_DTYPES, f"dtype must be one of uint8, int16, int32, int64 for labels, got {dtype}")
    _need(logits.shape[1] <= _LABEL_DTYPES[dtype],
          f"{logits.shape[1]} classes do not fit in {dtype}: use dtype=torch.int64")
    size = (int(size[0]), int(size[1]))
    if logits.numel() == 0:
        return torch.empty(logits.shape[0], *size, dtype=dtype, device=logits.device)
    backend = backend_for(logits)
    if backend == "reference":
        return ref.upsample_argmax_ref(logits, size).to(dtype)
    impl = _impl(backend)
    fn = impl.upsample_argmax_triton if backend == "triton" else impl.upsample_argmax_cpu
    return fn(logits, size, dtype)


class _FusedDistillation(torch.autograd.Function):
    """Loss forward that also writes d loss / d student in the same pass; backward only scales it."""

    @staticmethod
    def forward(ctx, teacher_logits, student_logits, mixed_scale, backend):  # type: ignore[override]
        need_grad = bool(ctx.needs_input_grad[1])
        impl = _impl(backend)
        fn = impl.distillation_forward_triton if backend == "triton" else impl.distillation_forward_cpu
        loss, grad = fn(teacher_logits, student_logits, float(mixed_scale), need_grad)
        ctx.student_dtype = student_logits.dtype
        if grad is not None:
            ctx.save_for_backward(grad)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return None, (grad * grad_loss).to(ctx.student_dtype), None, None


def symmetric_distillation_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                                mixed_scale: float = 0.5) -> torch.Tensor:
    """Mean cross-view distillation loss on [clean ; mixed] logits (2N,C,H,W); gradients reach the student only."""
    _need(student_logits.dim() == 4 and teacher_logits.shape == student_logits.shape,
          f"teacher and student logits must both be (2N,C,H,W), got {tuple(teacher_logits.shape)} "
          f"and {tuple(student_logits.shape)}")
    _need(student_logits.shape[0] % 2 == 0 and student_logits.shape[0] > 0,
          f"logits must stack [clean ; mixed] halves (an even batch), got batch {student_logits.shape[0]}")
    _floating(teacher_logits, "teacher_logits")
    _floating(student_logits, "student_logits")
    _same_device(teacher_logits, student_logits)
    backend = backend_for(student_logits)
    if backend == "reference" or student_logits[0].numel() == 0:
        return ref.symmetric_distillation_loss_ref(teacher_logits, student_logits, mixed_scale)
    return _FusedDistillation.apply(teacher_logits, student_logits, float(mixed_scale), backend)
