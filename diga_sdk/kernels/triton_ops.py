"""Triton kernels of the hot ops and their launchers (CUDA tensors natively; CPU tensors under
`TRITON_INTERPRET=1`, which must be set before this module is imported: `ops.py` imports it lazily).

Each kernel is one pass over its pixels; none forms a (B,C,H,W) intermediate except the loss's
gradient, which autograd needs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def _pow2(n: int, floor: int = 1) -> int:
    return max(floor, triton.next_power_of_2(int(n)))


# ---------------------------------------------------------------------------------------------------
# consensus_select: (1) softmax(-distance) at feature resolution, (2) fused upsample + argmax + keep


@triton.jit
def _lowres_weights_kernel(feat_ptr, cent_ptr, w_ptr, P, D, C,
                           BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    """weights[b, c, p] = softmax_c(-||feat[b, :, p] - cent[c]||), distances accumulated in float64."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, BLOCK_C)
    pm = offs_p < P
    cm = offs_c < C
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float64)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        dm = offs_d < D
        f = tl.load(feat_ptr + b * D * P + offs_d[None, :] * P + offs_p[:, None],
                    mask=pm[:, None] & dm[None, :], other=0.0).to(tl.float64)  # (P, D)
        c = tl.load(cent_ptr + offs_c[:, None] * D + offs_d[None, :],
                    mask=cm[:, None] & dm[None, :], other=0.0).to(tl.float64)  # (C, D)
        diff = f[:, None, :] - c[None, :, :]
        acc += tl.sum(diff * diff, axis=2)
    dist = tl.sqrt(acc).to(tl.float32)
    x = tl.where(cm[None, :], -dist, float("-inf"))
    e = tl.exp(x - tl.max(x, axis=1)[:, None])
    wv = e / tl.sum(e, axis=1)[:, None]
    tl.store(w_ptr + b * C * P + offs_c[None, :] * P + offs_p[:, None], wv, mask=pm[:, None] & cm[None, :])


@triton.jit
def _consensus_kernel(w_ptr, pl_ptr, out_ptr, C, h, w, H, W, scale_h, scale_w, ignore_index,
                      BLOCK: tl.constexpr):
    """Per output pixel: bilinear (align_corners=True) weights of every class from the four corners,
    running argmax (first maximum wins, as torch.argmax), keep the pseudo-label where they agree."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < H * W
    y = offs // W
    x = offs % W
    sy = scale_h * y.to(tl.float32)
    sx = scale_w * x.to(tl.float32)
    y0 = tl.minimum(sy.to(tl.int32), h - 1)
    x0 = tl.minimum(sx.to(tl.int32), w - 1)
    y1 = tl.where(y0 < h - 1, y0 + 1, y0)
    x1 = tl.where(x0 < w - 1, x0 + 1, x0)
    ly1 = tl.minimum(tl.maximum(sy - y0.to(tl.float32), 0.0), 1.0)
    lx1 = tl.minimum(tl.maximum(sx - x0.to(tl.float32), 0.0), 1.0)
    ly0 = 1.0 - ly1
    lx0 = 1.0 - lx1
    i00 = y0 * w + x0
    i01 = y0 * w + x1
    i10 = y1 * w + x0
    i11 = y1 * w + x1
    best = tl.full((BLOCK,), float("-inf"), tl.float32)
    arg = tl.zeros((BLOCK,), dtype=tl.int64)
    plane = w_ptr + b * C * h * w
    for c in range(C):
        pc = plane + c * h * w
        v = ly0 * (lx0 * tl.load(pc + i00, mask=m, other=0.0) + lx1 * tl.load(pc + i01, mask=m, other=0.0)) \
            + ly1 * (lx0 * tl.load(pc + i10, mask=m, other=0.0) + lx1 * tl.load(pc + i11, mask=m, other=0.0))
        better = v > best
        best = tl.where(better, v, best)
        arg = tl.where(better, c, arg)
    pl = tl.load(pl_ptr + b * H * W + offs, mask=m, other=0)
    keep = (pl != ignore_index) & (pl.to(tl.int64) == arg)
    tl.store(out_ptr + b * H * W + offs, tl.where(keep, pl, ignore_index).to(pl.dtype), mask=m)


def lowres_weights_triton(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(B,D,h,w), (C,D) -> (B,C,h,w) float32 softmax weights."""
    b, d, h, w = features.shape
    c = centroids.shape[0]
    feat = features.float().contiguous()
    cent = centroids.float().contiguous()
    weights = torch.empty(b, c, h, w, device=features.device, dtype=torch.float32)
    block_p, block_c, block_d = 32, _pow2(c, 2), 8
    _lowres_weights_kernel[(triton.cdiv(h * w, block_p), b)](feat, cent, weights, h * w, d, c,
                                                            BLOCK_P=block_p, BLOCK_C=block_c, BLOCK_D=block_d)
    return weights


def consensus_select_triton(pseudo_labels: torch.Tensor, features: torch.Tensor, centroids: torch.Tensor,
                            ignore_index: int = 255) -> torch.Tensor:
    from .cpu import _align_corners_scale

    b, _, h, w = features.shape
    big_h, big_w = pseudo_labels.shape[-2:]
    c = centroids.shape[0]
    weights = lowres_weights_triton(features, centroids)
    pseudo = pseudo_labels.contiguous()
    out = torch.empty_like(pseudo)
    block = 256
    _consensus_kernel[(triton.cdiv(big_h * big_w, block), b)](
        weights, pseudo, out, c, h, w, big_h, big_w, _align_corners_scale(h, big_h),
        _align_corners_scale(w, big_w), int(ignore_index), BLOCK=block)
    return out


# ---------------------------------------------------------------------------------------------------
# class_mix and the class histogram behind choose_classes


@triton.jit
def _class_mix_kernel(a_ptr, b_ptr, la_ptr, lb_ptr, chosen_ptr, oi_ptr, ol_ptr, P, K, CH, ignore_index,
                      BLOCK: tl.constexpr):
    """Mask from label_a and the chosen row; each image value is read only from the side it comes from."""
    pid = tl.program_id(0)
    bi = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < P
    la = tl.load(la_ptr + bi * P + offs, mask=m, other=0)
    lb = tl.load(lb_ptr + bi * P + offs, mask=m, other=0)
    la64 = la.to(tl.int64)
    inr = (la64 >= 0) & (la64 < K)
    pick = tl.load(chosen_ptr + bi * K + tl.where(inr, la64, 0), mask=m & inr, other=0) != 0
    take = pick | (la64 == ignore_index)
    tl.store(ol_ptr + bi * P + offs, tl.where(take, la, lb), mask=m)
    for ch in range(CH):
        base = (bi * CH + ch) * P + offs
        va = tl.load(a_ptr + base, mask=m & take, other=0.0)
        vb = tl.load(b_ptr + base, mask=m & (take == 0), other=0.0)
        tl.store(oi_ptr + base, tl.where(take, va, vb), mask=m)


@triton.jit
def _presence_kernel(lab_ptr, present_ptr, P, K, ignore_index, BLOCK: tl.constexpr):
    """present[b, label] = 1 for every valid label in the block (idempotent stores, no atomics needed)."""
    pid = tl.program_id(0)
    bi = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < P
    lab = tl.load(lab_ptr + bi * P + offs, mask=m, other=0).to(tl.int64)
    valid = m & (lab >= 0) & (lab < K) & (lab != ignore_index)
    tl.store(present_ptr + bi * K + tl.where(valid, lab, 0), tl.full((BLOCK,), 1, tl.int8), mask=valid)


def class_mix_triton(img_a: torch.Tensor, img_b: torch.Tensor, label_a: torch.Tensor, label_b: torch.Tensor,
                     chosen: torch.Tensor, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    b, ch, h, w = img_a.shape
    a = img_a.contiguous()
    bb = img_b.to(a.dtype).contiguous()
    la = label_a.contiguous()
    lb = label_b.to(la.dtype).contiguous()
    out_img = torch.empty_like(a)
    out_lab = torch.empty_like(la)
    block = 1024
    _class_mix_kernel[(triton.cdiv(h * w, block), b)](
        a, bb, la, lb, chosen.to(torch.int8).contiguous(), out_img, out_lab, h * w, chosen.shape[1], ch,
        int(ignore_index), BLOCK=block)
    return out_img, out_lab


def class_presence_triton(labels: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    b = labels.shape[0]
    lab = labels.contiguous().reshape(b, -1)
    present = torch.zeros(b, num_classes, dtype=torch.int8, device=labels.device)
    block = 1024
    _presence_kernel[(triton.cdiv(lab.shape[1], block), b)](lab, present, lab.shape[1], num_classes,
                                                            int(ignore_index), BLOCK=block)
    return present.bool()


# ---------------------------------------------------------------------------------------------------
# centroid_sums: one-hot(labels)^T @ features per pixel block with tl.dot (IEEE fp32), split over pixels


@triton.jit
def _centroid_sums_kernel(f_ptr, lab_ptr, part_ptr, cnt_ptr, P, D, C, ignore_index, P_PER_PROG,
                          BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_d = tl.program_id(0)
    pid_s = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    nb = tl.num_programs(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, BLOCK_C)
    dm = offs_d < D
    acc = tl.zeros((BLOCK_C, BLOCK_D), dtype=tl.float32)
    cnt = tl.zeros((BLOCK_C,), dtype=tl.int32)
    p_start = pid_s * P_PER_PROG
    p_end = tl.minimum(p_start + P_PER_PROG, P)
    for p0 in range(p_start, p_end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        pm = offs_p < p_end
        lab = tl.load(lab_ptr + b * P + offs_p, mask=pm, other=0).to(tl.int64)
        valid = pm & (lab >= 0) & (lab < C) & (lab != ignore_index)
        onehot = (lab[None, :] == offs_c[:, None]) & valid[None, :]  # (C, P)
        f = tl.load(f_ptr + b * D * P + offs_d[None, :] * P + offs_p[:, None],
                    mask=pm[:, None] & dm[None, :], other=0.0)  # (P, D)
        acc += tl.dot(onehot.to(tl.float32), f, input_precision="ieee")
        cnt += tl.sum(onehot.to(tl.int32), axis=1)
    row = (pid_s * nb + b) * C + offs_c
    tl.store(part_ptr + row[:, None] * D + offs_d[None, :], acc, mask=(offs_c[:, None] < C) & dm[None, :])
    if pid_d == 0:
        tl.store(cnt_ptr + row, cnt, mask=offs_c < C)


def centroid_sums_triton(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                         ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    b, d, h, w = features.shape
    p = h * w
    feat = features.float().contiguous()
    lab = labels.contiguous()
    block_c, block_p, block_d = _pow2(num_classes, 16), 32, 32
    split = max(1, min(64, triton.cdiv(p, 4096)))  # pixel splits: parallelism on a GPU, fixed order sums
    p_per = triton.cdiv(triton.cdiv(p, split), block_p) * block_p
    split = triton.cdiv(p, p_per)
    part = torch.empty(split, b, num_classes, d, device=features.device, dtype=torch.float32)
    cnt = torch.empty(split, b, num_classes, device=features.device, dtype=torch.int32)
    _centroid_sums_kernel[(triton.cdiv(d, block_d), split, b)](
        feat, lab, part, cnt, p, d, num_classes, int(ignore_index), p_per,
        BLOCK_C=block_c, BLOCK_P=block_p, BLOCK_D=block_d)
    return part.sum(0), cnt.sum(0, dtype=torch.int64)


# ---------------------------------------------------------------------------------------------------
# symmetric distillation: loss partial sums and the student's gradient in one pass


@triton.jit
def _cross_entropy_term(t_base, s_base, g_base, idx, cm, pm, weight, inv_npix, NEED_GRAD: tl.constexpr):
    """sum over the block's pixels of H(softmax(t), log_softmax(s)); writes weight*(q*sum(p) - p)/npix."""
    mask = cm[:, None] & pm[None, :]
    t = tl.load(t_base + idx, mask=mask, other=0.0).to(tl.float32)
    s_raw = tl.load(s_base + idx, mask=mask, other=0.0).to(tl.float32)
    t = tl.where(cm[:, None], t, float("-inf"))
    s = tl.where(cm[:, None], s_raw, float("-inf"))
    et = tl.exp(t - tl.max(t, axis=0)[None, :])
    p = et / tl.sum(et, axis=0)[None, :]
    s_max = tl.max(s, axis=0)
    es = tl.exp(s - s_max[None, :])
    zs = tl.sum(es, axis=0)
    lse = s_max + tl.log(zs)
    psum = tl.sum(p, axis=0)
    ps = tl.sum(p * s_raw, axis=0)  # p is 0 on padded classes, s_raw finite there
    per_pixel = tl.where(pm, psum * lse - ps, 0.0)
    if NEED_GRAD:
        q = es / zs[None, :]
        tl.store(g_base + idx, (q * psum[None, :] - p) * (weight * inv_npix), mask=mask)
    return tl.sum(per_pixel, axis=0) * weight


@triton.jit
def _distillation_kernel(t_ptr, s_ptr, g_ptr, part_ptr, N, C, HW, mixed_scale, inv_npix,
                         NEED_GRAD: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    pid = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    offs_p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, BLOCK_C)
    pm = offs_p < HW
    cm = offs_c < C
    idx = offs_c[:, None] * HW + offs_p[None, :]
    clean = n * C * HW
    mixed = (n + N) * C * HW
    total = _cross_entropy_term(t_ptr + clean, s_ptr + mixed, g_ptr + mixed, idx, cm, pm, 1.0, inv_npix, NEED_GRAD)
    total += _cross_entropy_term(t_ptr + mixed, s_ptr + clean, g_ptr + clean, idx, cm, pm, mixed_scale, inv_npix,
                                 NEED_GRAD)
    tl.store(part_ptr + n * tl.num_programs(0) + pid, total)


def distillation_forward_triton(teacher_logits: torch.Tensor, student_logits: torch.Tensor, mixed_scale: float,
                                need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(loss float32 scalar, d loss / d student float32 or None)."""
    two_n, c, h, w = student_logits.shape
    n = two_n // 2
    t = teacher_logits.detach().contiguous()
    s = student_logits.detach().contiguous()
    hw = h * w
    block_c = _pow2(c, 2)
    block_p = max(16, min(256, 4096 // block_c))
    grid = (triton.cdiv(hw, block_p), n)
    part = torch.empty(n, grid[0], device=s.device, dtype=torch.float32)
    grad = torch.empty(s.shape, device=s.device, dtype=torch.float32) if need_grad else part
    _distillation_kernel[grid](t, s, grad, part, n, c, hw, float(mixed_scale), 1.0 / (n * hw),
                               NEED_GRAD=need_grad, BLOCK_C=block_c, BLOCK_P=block_p)
    loss = (part.sum(dtype=torch.float64) / (n * hw)).float()
    return loss, (grad if need_grad else None)


# ---------------------------------------------------------------------------------------------------
# upsample_argmax: bilinear (align_corners=False) upsample of logits fused with the argmax over classes


@triton.jit
def _upsample_argmax_kernel(x_ptr, out_ptr, ys0_ptr, ys1_ptr, wy0_ptr, wy1_ptr, xs0_ptr, xs1_ptr, wx0_ptr, wx1_ptr,
                            C, h, w, H, W, BLOCK: tl.constexpr):
    """Per output pixel: the four taps of every class (rows first interpolated along x, then blended
    along y, the order PyTorch's CPU kernel uses), running argmax with strict > (ties keep the lowest
    class, as torch.argmax); the (B,C,H,W) upsampled logits are never written."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < H * W
    y = offs // W
    x = offs % W
    y0 = tl.load(ys0_ptr + y, mask=m, other=0)
    y1 = tl.load(ys1_ptr + y, mask=m, other=0)
    x0 = tl.load(xs0_ptr + x, mask=m, other=0)
    x1 = tl.load(xs1_ptr + x, mask=m, other=0)
    wy0 = tl.load(wy0_ptr + y, mask=m, other=0.0)
    wy1 = tl.load(wy1_ptr + y, mask=m, other=0.0)
    wx0 = tl.load(wx0_ptr + x, mask=m, other=0.0)
    wx1 = tl.load(wx1_ptr + x, mask=m, other=0.0)
    i00 = y0 * w + x0
    i01 = y0 * w + x1
    i10 = y1 * w + x0
    i11 = y1 * w + x1
    best = tl.full((BLOCK,), float("-inf"), tl.float32)
    arg = tl.zeros((BLOCK,), dtype=tl.int32)
    plane = x_ptr + b * C * h * w
    for c in range(C):
        pc = plane + c * h * w
        t0 = tl.load(pc + i00, mask=m, other=0.0) * wx0 + tl.load(pc + i01, mask=m, other=0.0) * wx1
        t1 = tl.load(pc + i10, mask=m, other=0.0) * wx0 + tl.load(pc + i11, mask=m, other=0.0) * wx1
        v = t0 * wy0 + t1 * wy1
        better = (v > best) | (c == 0)
        best = tl.where(better, v, best)
        arg = tl.where(better, c, arg)
    tl.store(out_ptr + b * H * W + offs, arg.to(out_ptr.dtype.element_ty), mask=m)


def upsample_argmax_triton(logits: torch.Tensor, size: tuple[int, int], dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """(B,C,h,w) -> (B,H,W) labels of `dtype`: bilinear upsample + argmax in one pass over the output."""
    from .cpu import bilinear_taps

    b, c, h, w = logits.shape
    big_h, big_w = int(size[0]), int(size[1])
    x = logits.detach().float().contiguous()
    dev = x.device
    taps_y = [torch.from_numpy(t).to(dev) for t in bilinear_taps(h, big_h)]
    taps_x = [torch.from_numpy(t).to(dev) for t in bilinear_taps(w, big_w)]
    out = torch.empty(b, big_h, big_w, dtype=dtype, device=dev)
    block = 256
    _upsample_argmax_kernel[(triton.cdiv(big_h * big_w, block), b)](
        x, out, *taps_y, *taps_x, c, h, w, big_h, big_w, BLOCK=block)
    return out
