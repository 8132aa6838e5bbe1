"""CPU fast paths: numba kernels, one parallel pass per op (the loss kernel brings its own vectorisable
exp, since numba's np.exp stays a scalar libm call without SVML). Inputs are validated by the public
functions in `ops.py`; these take CPU tensors and return new ones."""

from __future__ import annotations

import numpy as np
import torch

# Gap between the two largest corner weights above which a whole cell's upsampled argmax is known
# without interpolating: far above float32 rounding (~1e-7 for weights <= 1).
UNIFORM_CELL_TAU = 1e-5


def _nb():
    """The numba kernels, run with torch's thread count.

    Numba's OpenMP threading layer starts on the first parallel launch and sets the OpenMP thread
    count it shares with torch to NUMBA_NUM_THREADS (all cores), so without this every torch op after
    the first kernel call ran with a different thread count than the caller set (and, through other
    reduction splits, results ~1e-6 apart from the same op before it). Starting the layer here at
    torch's count and handing torch its own count back keeps both at what the caller asked for."""
    import numba

    from . import cpu_numba

    n = torch.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return cpu_numba


def _align_corners_scale(src: int, dst: int) -> float:
    """PyTorch's align_corners=True source scale, in float32 as its CPU kernel computes it."""
    return float(torch.tensor((src - 1) / (dst - 1), dtype=torch.float32)) if dst > 1 else 0.0


def lowres_weights_cpu(features: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(B,D,h,w), (C,D) -> weights (B,C,h*w), top label (B,h*w) int64, top-2 gap (B,h*w)."""
    b, d, h, w = features.shape
    c = centroids.shape[0]
    feat = features.detach().float().contiguous().reshape(b, d, h * w)
    cent = centroids.detach().float().contiguous()
    weights = torch.empty(b, c, h * w)
    top = torch.empty(b, h * w, dtype=torch.int64)
    gap = torch.empty(b, h * w)
    _nb().lowres_weights(feat.numpy(), cent.numpy(), weights.numpy(), top.numpy(), gap.numpy())
    return weights, top, gap


def _align_corners_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Per source index the first output index it leads (src+1 bounds, int64) and per output index the
    weight of the next source index (float32), for align_corners=True as PyTorch's CPU kernel forms them."""
    pos = np.float32(_align_corners_scale(src, dst)) * np.arange(dst, dtype=np.float32)
    i0 = np.minimum(pos.astype(np.int64), src - 1)
    lam = np.clip(pos - i0.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    lo = np.searchsorted(i0, np.arange(src + 1), side="left").astype(np.int64)
    return lo, lam


def consensus_select_cpu(pseudo_labels: torch.Tensor, features: torch.Tensor, centroids: torch.Tensor,
                         ignore_index: int = 255) -> torch.Tensor:
    """Fused consensus selection: softmax weights at feature resolution, then per cell row one pass over
    its output rows that interpolates only the candidate classes of cells whose corners disagree;
    (B,C,H,W) is never formed."""
    b, _, h, w = features.shape
    big_h, big_w = pseudo_labels.shape[-2:]
    weights, top, gap = lowres_weights_cpu(features, centroids)
    row_lo, lys = _align_corners_taps(h, big_h)
    col_lo, lxs = _align_corners_taps(w, big_w)
    pseudo = pseudo_labels.contiguous()
    out = torch.empty_like(pseudo)
    _nb().consensus_cells(weights.numpy(), top.numpy(), gap.numpy(), pseudo.numpy(), out.numpy(), row_lo, lys,
                          col_lo, lxs, UNIFORM_CELL_TAU, int(ignore_index))
    return out


_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor):
    """numpy view of a contiguous tensor's bits as a signed integer of the same width."""
    return t.view(_BITS[t.element_size()]).numpy()


def class_mix_cpu(img_a: torch.Tensor, img_b: torch.Tensor, label_a: torch.Tensor, label_b: torch.Tensor,
                  chosen: torch.Tensor, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass: read both images and label maps once, write the mixed image and label once."""
    b, ch, h, w = img_a.shape
    a = img_a.detach().contiguous().view(b, ch, h * w)
    bb = img_b.detach().to(a.dtype).contiguous().view(b, ch, h * w)
    la = label_a.contiguous().view(b, h * w)
    lb = label_b.to(la.dtype).contiguous().view(b, h * w)
    out_img = torch.empty_like(a)
    out_lab = torch.empty_like(la)
    table = chosen.to(torch.uint8).contiguous()
    k = table.shape[1]
    bit_rows = (table[:, : min(k, 63)].long() << torch.arange(min(k, 63))).sum(1)  # (B,) int64 bit sets
    _nb().class_mix(_bits(a), _bits(bb), la.numpy(), _bits(la), _bits(lb), table.numpy(), bit_rows.numpy(),
                    int(ignore_index), _bits(out_img), _bits(out_lab))
    return out_img.view(b, ch, h, w), out_lab.view(b, h, w)


def class_presence_cpu(labels: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """(B,H,W) -> (B,K) bool presence in one histogram pass."""
    b = labels.shape[0]
    present = torch.zeros(b, num_classes, dtype=torch.uint8)
    _nb().class_presence(labels.contiguous().reshape(b, -1).numpy(), int(num_classes), int(ignore_index),
                         present.numpy())
    return present.bool()


def centroid_sums_cpu(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                      ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,C,D) float32 sums (float64 accumulation) and (B,C) int64 counts in one pass per feature plane."""
    b, d, h, w = features.shape
    feat = features.detach().float().contiguous().reshape(b, d, h * w)
    sums = torch.empty(b, num_classes, d)
    counts = torch.zeros(b, num_classes + 1, dtype=torch.int64)  # last column: ignored pixels
    _nb().centroid_sums(feat.numpy(), labels.contiguous().reshape(b, -1).numpy(), int(num_classes),
                        int(ignore_index), sums.numpy(), counts.numpy())
    return sums, counts[:, :num_classes].contiguous()


def distillation_forward_cpu(teacher_logits: torch.Tensor, student_logits: torch.Tensor, mixed_scale: float,
                             need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss and d loss / d student in one parallel numba pass over pixel blocks (both cross-view terms
    per block): reads teacher and student once, writes the gradient once, keeps nothing else.

    Per pixel, H(p, log q) = sum_c p_c (lse(s) - s_c) and its gradient is q - p (sum_c p_c = 1),
    what autograd through log_softmax gives. Returns (loss float32 scalar, grad float32 or None).
    """
    two_n, c, h, w = student_logits.shape
    n = two_n // 2
    t = teacher_logits.detach().float().contiguous().view(two_n, c, h * w)
    s = student_logits.detach().float().contiguous().view(two_n, c, h * w)
    npix = n * h * w
    grad = torch.empty_like(s) if need_grad else torch.empty(two_n, c, 1)
    nblk = -(-(h * w) // _nb()._LOSS_BLOCK)
    part = torch.empty(n * nblk, dtype=torch.float64)
    _nb().distillation(t.numpy(), s.numpy(), grad.numpy(), float(mixed_scale), bool(need_grad), 1.0 / npix,
                       part.numpy())
    loss = (part.sum() / npix).float()
    return loss, (grad.view(two_n, c, h, w) if need_grad else None)


def bilinear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source taps of a bilinear resize (align_corners=False) along one axis, as PyTorch's CPU kernel
    forms them: index i0, i1 (int64, i1 = i0 clamped at the edge) and weights w0, w1 (float32).

    Source coordinate max(scale * (x + 0.5) - 0.5, 0) with scale = src / dst in float32; the product
    and the subtraction are exact in float64, so one rounding gives the fused multiply-add PyTorch's
    FMA build computes."""
    scale = np.float32(src) / np.float32(dst)
    pos = (np.float64(scale) * (np.arange(dst, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    pos = np.maximum(pos, np.float32(0.0))
    i0 = np.minimum(np.floor(pos).astype(np.int64), src - 1)
    lam = np.clip(pos - i0.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    i1 = np.where(i0 < src - 1, i0 + 1, i0)
    return i0, i1, (np.float32(1.0) - lam).astype(np.float32), lam


def upsample_argmax_cpu(logits: torch.Tensor, size: tuple[int, int], dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Fused bilinear upsample + argmax: (B,C,h,w) -> (B,H,W) labels of `dtype`; no (B,C,H,W) tensor."""
    b, _, h, w = logits.shape
    big_h, big_w = int(size[0]), int(size[1])
    x = logits.detach().float().contiguous()
    out = torch.empty(b, big_h, big_w, dtype=dtype)
    ys0, ys1, wy0, wy1 = bilinear_taps(h, big_h)
    xs0, xs1, wx0, wx1 = bilinear_taps(w, big_w)
    _nb().upsample_argmax(x.numpy(), ys0, ys1, wy0, wy1, xs0, xs1, wx0, wx1, out.numpy())
    return out
