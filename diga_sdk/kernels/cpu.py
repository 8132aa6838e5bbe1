"""CPU fast paths: numba kernels, one parallel pass per op (the loss kernel brings its own vectorisable
exp, since numba's np.exp stays a scalar libm call without SVML). Inputs are validated by the public
functions in `ops.py`; these take CPU tensors and return new ones."""

from __future__ import annotations

import functools

import torch

# Gap between the two largest corner weights above which a whole cell's upsampled argmax is known
# without interpolating: far above float32 rounding (~1e-7 for weights <= 1).
UNIFORM_CELL_TAU = 1e-5


@functools.cache
def _nb():
    """The numba kernels, with numba's thread pool started here: its OpenMP layer sets the process-wide
    OpenMP thread count to numba's own when the pool starts (1 -> 2 under OMP_NUM_THREADS=1, measured),
    which would silently change torch's; torch's count is put back right after."""
    import numba

    from . import cpu_numba

    threads = torch.get_num_threads()
    numba.get_num_threads()  # starts the pool
    torch.set_num_threads(threads)
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


def consensus_select_cpu(pseudo_labels: torch.Tensor, features: torch.Tensor, centroids: torch.Tensor,
                         ignore_index: int = 255) -> torch.Tensor:
    """Fused consensus selection: low-res softmax weights, then one pass over output rows that
    interpolates only the cells whose corners disagree; (B,C,H,W) is never formed."""
    nb = _nb()
    b, _, h, w = features.shape
    big_h, big_w = pseudo_labels.shape[-2:]
    weights, top, gap = lowres_weights_cpu(features, centroids)
    cells = torch.empty(b, h, w, dtype=torch.int64)
    nb.uniform_cells(top.numpy(), gap.numpy(), h, w, UNIFORM_CELL_TAU, cells.numpy())
    pseudo = pseudo_labels.contiguous()
    out = torch.empty_like(pseudo)
    nb.consensus_upsample(weights.numpy(), cells.numpy(), pseudo.numpy(), out.numpy(), h, w,
                          _align_corners_scale(h, big_h), _align_corners_scale(w, big_w), int(ignore_index))
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
    _nb().class_mix(_bits(a), _bits(bb), la.numpy(), _bits(la), _bits(lb), chosen.to(torch.uint8).contiguous().numpy(),
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
