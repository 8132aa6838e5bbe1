"""Numba kernels behind the CPU fast paths: each op is one parallel pass over its pixels.

Imported lazily by `cpu.py` (numba costs ~0.4 s to import, each kernel ~1-3 s to compile once per
dtype combination; `cache=True` keeps the machine code on disk across processes). Arrays come in as
zero-copy numpy views of contiguous torch tensors; outputs are written into preallocated arrays.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_PIX_CHUNK = 128  # feature pixels per task in the distance kernel (C x chunk float64 accumulators)
_MIX_BLOCK = 8192  # pixels per task in the mixing kernel

# --- a vectorisable float32 exp (numba has no SVML here: np.exp stays a scalar libm call)

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # ln 2 split so k * _LN2_HI is exact for |k| < 2^11
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_MIN = np.float32(-87.0)  # exp(-87) ~ 1.6e-38: still a normal float32
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_C2 = np.float32(1.0 / 2.0)
_C3 = np.float32(1.0 / 6.0)
_C4 = np.float32(1.0 / 24.0)
_C5 = np.float32(1.0 / 120.0)
_C6 = np.float32(1.0 / 720.0)
_C7 = np.float32(1.0 / 5040.0)
_LOSS_BLOCK = 256  # pixels per task


@njit(cache=True, inline="always")
def _exp_nonpositive(buf, scale_bits, scale, n):  # pragma: no cover - compiled
    """buf[:n] = exp(buf[:n]) for arguments <= 0 (clamped at -87): Cody-Waite reduction to
    r in [-ln2/2, ln2/2], a degree-7 Taylor polynomial (~1 ulp), times 2^k built from its bits.
    Branch-free so LLVM vectorises it; scale is a float32 view of the int32 scale_bits."""
    for i in range(n):
        x = max(buf[i], _EXP_MIN)
        k = np.floor(x * _LOG2E + _HALF)
        r = (x - k * _LN2_HI) - k * _LN2_LO
        p = _ONE + r * (_ONE + r * (_C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * (_C6 + r * _C7))))))
        buf[i] = p
        scale_bits[i] = (np.int32(k) + np.int32(127)) << np.int32(23)
    for i in range(n):
        buf[i] = buf[i] * scale[i]



@njit(cache=True, fastmath={"contract", "reassoc"})
def _tile_sq_distances(tile, cent64, cnorm, acc):  # pragma: no cover - compiled
    """acc (C,T) = ||f||^2 - 2 f.c + ||c||^2 for a (D,T) float64 feature tile: one FMA per (c,d,pixel);
    float64 keeps the cancellation error ~1e-13 relative, far below float32 rounding of the result."""
    nd, nt = tile.shape
    nc = cent64.shape[0]
    fnorm = np.zeros(nt, np.float64)
    for d in range(nd):
        for i in range(nt):
            fnorm[i] += tile[d, i] * tile[d, i]
    c = 0
    while c + 4 <= nc:  # four classes per sweep: each tile element loaded once for four FMAs
        d0 = np.zeros(nt, np.float64)
        d1 = np.zeros(nt, np.float64)
        d2 = np.zeros(nt, np.float64)
        d3 = np.zeros(nt, np.float64)
        for d in range(nd):
            a0 = cent64[c, d]
            a1 = cent64[c + 1, d]
            a2 = cent64[c + 2, d]
            a3 = cent64[c + 3, d]
            for i in range(nt):
                tv = tile[d, i]
                d0[i] += tv * a0
                d1[i] += tv * a1
                d2[i] += tv * a2
                d3[i] += tv * a3
        for i in range(nt):
            acc[c, i] = fnorm[i] - 2.0 * d0[i] + cnorm[c]
            acc[c + 1, i] = fnorm[i] - 2.0 * d1[i] + cnorm[c + 1]
            acc[c + 2, i] = fnorm[i] - 2.0 * d2[i] + cnorm[c + 2]
            acc[c + 3, i] = fnorm[i] - 2.0 * d3[i] + cnorm[c + 3]
        c += 4
    while c < nc:
        dot = np.zeros(nt, np.float64)
        for d in range(nd):
            cv = cent64[c, d]
            for i in range(nt):
                dot[i] += tile[d, i] * cv
        for i in range(nt):
            acc[c, i] = fnorm[i] - 2.0 * dot[i] + cnorm[c]
        c += 1


@njit(parallel=True, cache=True)
def lowres_weights(feat, cent, weights, top_label, margin):  # pragma: no cover - compiled
    """feat (B,D,P) f32, cent (C,D) f32 -> weights (B,C,P) = softmax_c(-||f - c||), the argmax (first
    maximum) and the gap between the two largest weights per feature pixel. Distances accumulate in
    float64 and are rounded to float32 before the softmax, as in the reference."""
    nb, nd, npix = feat.shape
    nc = cent.shape[0]
    nchunk = (npix + _PIX_CHUNK - 1) // _PIX_CHUNK
    cent64 = cent.astype(np.float64)
    cnorm = np.zeros(nc, np.float64)
    for c in range(nc):
        for d in range(nd):
            cnorm[c] += cent64[c, d] * cent64[c, d]
    for job in prange(nb * nchunk):
        b = job // nchunk
        p0 = (job % nchunk) * _PIX_CHUNK
        n = min(_PIX_CHUNK, npix - p0)
        tile = np.zeros((nd, _PIX_CHUNK), np.float64)  # features converted once per tile
        for d in range(nd):
            for i in range(n):
                tile[d, i] = feat[b, d, p0 + i]
        acc = np.empty((nc, _PIX_CHUNK), np.float64)
        _tile_sq_distances(tile, cent64, cnorm, acc)
        # softmax over classes of x_c = -dist_c (float32, max-subtracted), vectorised over the tile
        x32 = np.empty((nc, _PIX_CHUNK), np.float32)
        xmax = np.full(_PIX_CHUNK, -np.inf, np.float32)
        for c in range(nc):
            for i in range(_PIX_CHUNK):
                v = -np.float32(np.sqrt(max(acc[c, i], 0.0)))
                x32[c, i] = v
                xmax[i] = max(xmax[i], v)
        total = np.zeros(_PIX_CHUNK, np.float32)
        xbuf = np.empty(_PIX_CHUNK, np.float32)
        bits = np.empty(_PIX_CHUNK, np.int32)
        scale = bits.view(np.float32)
        for c in range(nc):
            for i in range(_PIX_CHUNK):
                xbuf[i] = x32[c, i] - xmax[i]
            _exp_nonpositive(xbuf, bits, scale, _PIX_CHUNK)
            for i in range(_PIX_CHUNK):
                x32[c, i] = xbuf[i]
                total[i] += xbuf[i]
        best = np.full(_PIX_CHUNK, -1.0, np.float32)
        second = np.full(_PIX_CHUNK, -1.0, np.float32)
        arg = np.zeros(_PIX_CHUNK, np.int64)
        for c in range(nc):
            for i in range(_PIX_CHUNK):
                wv = x32[c, i] / total[i]
                x32[c, i] = wv
                gt = wv > best[i]
                second[i] = best[i] if gt else (wv if wv > second[i] else second[i])
                best[i] = wv if gt else best[i]
                arg[i] = c if gt else arg[i]
            for i in range(n):
                weights[b, c, p0 + i] = x32[c, i]
        for i in range(n):
            top_label[b, p0 + i] = arg[i]
            margin[b, p0 + i] = best[i] - second[i]


@njit(parallel=True, cache=True)
def uniform_cells(top_label, margin, h, w, tau, cell_label):  # pragma: no cover - compiled
    """cell_label (B,h,w): the class that wins everywhere in the cell spanned by corners (y0, y0+1) x
    (x0, x0+1) (clamped at the last row/column), or -1. A class that is the argmax at all four corners
    by more than tau is the argmax of every convex combination of them, rounding included."""
    nb = top_label.shape[0]
    for job in prange(nb * h):
        b = job // h
        y0 = job % h
        y1 = y0 + 1 if y0 < h - 1 else y0
        for x0 in range(w):
            x1 = x0 + 1 if x0 < w - 1 else x0
            lab = top_label[b, y0 * w + x0]
            ok = (top_label[b, y0 * w + x1] == lab) and (top_label[b, y1 * w + x0] == lab) \
                and (top_label[b, y1 * w + x1] == lab)
            m = min(min(margin[b, y0 * w + x0], margin[b, y0 * w + x1]),
                    min(margin[b, y1 * w + x0], margin[b, y1 * w + x1]))
            cell_label[b, y0, x0] = lab if (ok and m > tau) else -1


@njit(parallel=True, cache=True)
def consensus_upsample(weights, cell_label, pseudo, out, h, w, scale_h, scale_w, ignore_index):  # pragma: no cover
    """Per output row: feature label = argmax_c of the bilinear (align_corners=True) upsampling of the
    (B,C,h*w) weights, computed only in cells without a uniform winner and never stored at full
    resolution; out = pseudo where it equals the feature label, else ignore_index."""
    nb, nc, _ = weights.shape
    big_h = pseudo.shape[1]
    big_w = pseudo.shape[2]
    # column interpolation table, shared by every row (same arithmetic as PyTorch's CPU kernel)
    xs0 = np.empty(big_w, np.int64)
    xs1 = np.empty(big_w, np.int64)
    lx1 = np.empty(big_w, np.float32)
    for x in range(big_w):
        sx = np.float32(scale_w) * np.float32(x)
        x0 = min(np.int64(sx), w - 1)
        xs0[x] = x0
        xs1[x] = x0 + 1 if x0 < w - 1 else x0
        lx1[x] = min(max(sx - np.float32(x0), np.float32(0.0)), np.float32(1.0))
    for job in prange(nb * big_h):
        b = job // big_h
        y = job % big_h
        sy = np.float32(scale_h) * np.float32(y)
        y0 = min(np.int64(sy), h - 1)
        y1 = y0 + 1 if y0 < h - 1 else y0
        ly1 = min(max(sy - np.float32(y0), np.float32(0.0)), np.float32(1.0))
        ly0 = np.float32(1.0) - ly1
        arg = np.empty(big_w, np.int64)
        todo = np.empty(big_w, np.int64)
        ntodo = 0
        for x in range(big_w):
            lab = cell_label[b, y0, xs0[x]]
            arg[x] = lab
            if lab < 0:
                todo[ntodo] = x
                ntodo += 1
        if ntodo > 0:
            best = np.full(ntodo, -np.inf, np.float32)
            barg = np.zeros(ntodo, np.int64)
            c0 = np.empty(ntodo, np.int64)
            c1 = np.empty(ntodo, np.int64)
            t1 = np.empty(ntodo, np.float32)
            for j in range(ntodo):
                c0[j] = xs0[todo[j]]
                c1[j] = xs1[todo[j]]
                t1[j] = lx1[todo[j]]
            row = np.empty(w, np.float32)
            for c in range(nc):
                for xx in range(w):
                    row[xx] = ly0 * weights[b, c, y0 * w + xx] + ly1 * weights[b, c, y1 * w + xx]
                for j in range(ntodo):
                    t = t1[j]
                    v = (np.float32(1.0) - t) * row[c0[j]] + t * row[c1[j]]
                    better = v > best[j]
                    best[j] = v if better else best[j]
                    barg[j] = c if better else barg[j]
            for j in range(ntodo):
                arg[todo[j]] = barg[j]
        for x in range(big_w):
            pl = pseudo[b, y, x]
            keep = (pl != ignore_index) and (np.int64(pl) == arg[x])
            out[b, y, x] = pl if keep else ignore_index


@njit(parallel=True, cache=True)
def class_mix(img_a, img_b, label_a, la_bits, lb_bits, chosen, ignore_index, out_img, out_bits):  # pragma: no cover
    """One pass: a pixel takes A where label_a is a chosen class or ignore_index, else B.

    Images (B,CH,P) and labels (B,P) come as same-width signed-integer views of their bits, so the
    selection is a branch-free bit blend `(a & m) | (b & ~m)` that vectorises; label_a's own values
    decide the mask (chosen (B,K) uint8 is gathered at the clamped label)."""
    nb, nch, npix = img_a.shape
    k = chosen.shape[1]
    nblk = (npix + _MIX_BLOCK - 1) // _MIX_BLOCK
    for job in prange(nb * nblk):
        b = job // nblk
        p0 = (job % nblk) * _MIX_BLOCK
        p1 = min(p0 + _MIX_BLOCK, npix)
        mask = np.empty(p1 - p0, np.int64)
        for i in range(p0, p1):
            la = np.int64(label_a[b, i])
            idx = min(max(la, 0), k - 1)
            t = (la == ignore_index) | ((chosen[b, idx] != 0) & (la >= 0) & (la < k))
            m = -np.int64(t)
            mask[i - p0] = m
            out_bits[b, i] = (la_bits[b, i] & m) | (lb_bits[b, i] & ~m)
        for ch in range(nch):
            for i in range(p0, p1):
                m = mask[i - p0]
                out_img[b, ch, i] = (img_a[b, ch, i] & m) | (img_b[b, ch, i] & ~m)


@njit(parallel=True, cache=True)
def class_presence(labels, k, ignore_index, present):  # pragma: no cover - compiled
    """labels (B,P) -> present (B,K) uint8: one histogram pass, split in blocks merged afterwards."""
    nb, npix = labels.shape
    nblk = (npix + _MIX_BLOCK * 4 - 1) // (_MIX_BLOCK * 4)
    part = np.zeros((nb * nblk, k), np.uint8)
    for job in prange(nb * nblk):
        b = job // nblk
        p0 = (job % nblk) * _MIX_BLOCK * 4
        p1 = min(p0 + _MIX_BLOCK * 4, npix)
        for i in range(p0, p1):
            la = np.int64(labels[b, i])
            if la >= 0 and la < k and la != ignore_index:
                part[job, la] = 1
    for b in range(nb):
        for j in range(nblk):
            for c in range(k):
                present[b, c] |= part[b * nblk + j, c]


@njit(parallel=True, cache=True)
def centroid_sums(feat, labels, nc, ignore_index, sums, counts):  # pragma: no cover - compiled
    """feat (B,D,P), labels (B,P) -> sums (B,C,D) f32 (float64 accumulation), counts (B,C) i64."""
    nb, nd, npix = feat.shape
    cls = np.empty((nb, npix), np.int64)
    for b in prange(nb):
        for i in range(npix):
            la = np.int64(labels[b, i])
            cls[b, i] = la if (la >= 0 and la < nc and la != ignore_index) else nc
    for b in range(nb):
        for i in range(npix):
            counts[b, cls[b, i]] += 1
    for job in prange(nb * nd):
        b = job // nd
        d = job % nd
        acc = np.zeros((4, nc + 1), np.float64)  # four banks break the add-latency chain
        for i in range(npix):
            acc[i & 3, cls[b, i]] += feat[b, d, i]
        for c in range(nc):
            sums[b, c, d] = np.float32(acc[0, c] + acc[1, c] + acc[2, c] + acc[3, c])


@njit(cache=True)
def _distill_term(t, s, g, need_grad, coef, p0, n, et, es, tmax, smax, tsum, ssum, pts, xbuf, bits, scale):  # pragma: no cover
    """One cross-entropy term on a pixel block: t, s, g are (C, HW) planes. Returns the block's loss sum."""
    nc = t.shape[0]
    for i in range(n):
        tmax[i] = t[0, p0 + i]
        smax[i] = s[0, p0 + i]
        tsum[i] = 0.0
        ssum[i] = 0.0
        pts[i] = 0.0
    for c in range(1, nc):
        for i in range(n):
            tmax[i] = max(tmax[i], t[c, p0 + i])
            smax[i] = max(smax[i], s[c, p0 + i])
    for c in range(nc):
        for i in range(n):
            xbuf[i] = t[c, p0 + i] - tmax[i]
        _exp_nonpositive(xbuf, bits, scale, n)
        for i in range(n):
            et[c, i] = xbuf[i]
            tsum[i] += xbuf[i]
            pts[i] += xbuf[i] * s[c, p0 + i]
        for i in range(n):
            xbuf[i] = s[c, p0 + i] - smax[i]
        _exp_nonpositive(xbuf, bits, scale, n)
        for i in range(n):
            es[c, i] = xbuf[i]
            ssum[i] += xbuf[i]
    total = 0.0
    for i in range(n):
        lse = smax[i] + np.log(ssum[i])
        total += np.float64(lse - pts[i] / tsum[i])  # sum_c p_c (lse - s_c), sum_c p_c = 1
        tsum[i] = _ONE / tsum[i]
        ssum[i] = _ONE / ssum[i]
    if need_grad:
        for c in range(nc):
            for i in range(n):
                g[c, p0 + i] = (es[c, i] * ssum[i] - et[c, i] * tsum[i]) * coef
    return total


@njit(parallel=True, cache=True)
def distillation(t, s, g, mixed_scale, need_grad, inv_npix, part):  # pragma: no cover - compiled
    """t, s, g: (2N, C, HW) float32 [clean ; mixed]. part (N * blocks) float64 receives each block's
    weighted loss sum; g receives d loss / d s when need_grad."""
    two_n, nc, hw = s.shape
    nn = two_n // 2
    nblk = (hw + _LOSS_BLOCK - 1) // _LOSS_BLOCK
    for job in prange(nn * nblk):
        k = job // nblk
        p0 = (job % nblk) * _LOSS_BLOCK
        n = min(_LOSS_BLOCK, hw - p0)
        et = np.empty((nc, _LOSS_BLOCK), np.float32)
        es = np.empty((nc, _LOSS_BLOCK), np.float32)
        tmax = np.empty(_LOSS_BLOCK, np.float32)
        smax = np.empty(_LOSS_BLOCK, np.float32)
        tsum = np.empty(_LOSS_BLOCK, np.float32)
        ssum = np.empty(_LOSS_BLOCK, np.float32)
        pts = np.empty(_LOSS_BLOCK, np.float32)
        xbuf = np.empty(_LOSS_BLOCK, np.float32)
        bits = np.empty(_LOSS_BLOCK, np.int32)
        scale = bits.view(np.float32)
        a = _distill_term(t[k], s[nn + k], g[nn + k], need_grad, np.float32(inv_npix), p0, n,
                          et, es, tmax, smax, tsum, ssum, pts, xbuf, bits, scale)
        b = _distill_term(t[nn + k], s[k], g[k], need_grad, np.float32(mixed_scale * inv_npix), p0, n,
                          et, es, tmax, smax, tsum, ssum, pts, xbuf, bits, scale)
        part[job] = a + mixed_scale * b


# --- fused bilinear upsample (align_corners=False) + argmax over classes

_UP_BAND = 16  # output rows per task


@njit(parallel=True, cache=True, fastmath={"contract"})
def upsample_argmax(logits, ys0, ys1, wy0, wy1, xs0, xs1, wx0, wx1, out):  # pragma: no cover - compiled
    """logits (B,C,h,w) f32 -> out (B,H,W): argmax_c of the bilinear upsampling, never stored at full size.

    Per band of output rows, each source row it touches is interpolated along x once into a
    (C, W) buffer (t = v0*wx0 + v1*wx1, the order PyTorch's CPU kernel evaluates; with FMA units both
    compilers fuse the same product), then every output row blends two of those rows per class
    (t0*wy0 + t1*wy1) and keeps a running argmax (strict >, so ties keep the lowest class)."""
    nb, nc, h, w = logits.shape
    big_h = out.shape[1]
    big_w = out.shape[2]
    nband = (big_h + _UP_BAND - 1) // _UP_BAND
    for job in prange(nb * nband):
        b = job // nband
        r0 = (job % nband) * _UP_BAND
        r1 = min(r0 + _UP_BAND, big_h)
        first = ys0[r0]
        last = ys1[r1 - 1]
        for y in range(r0, r1):
            first = min(first, ys0[y])
            last = max(last, ys1[y])
        nrow = last - first + 1
        rows = np.empty((nrow, nc, big_w), np.float32)
        for r in range(nrow):
            sy = first + r
            for c in range(nc):
                src = logits[b, c, sy]
                dst = rows[r, c]
                for x in range(big_w):
                    dst[x] = src[xs0[x]] * wx0[x] + src[xs1[x]] * wx1[x]
        best = np.empty(big_w, np.float32)
        arg = np.empty(big_w, np.int32)
        for y in range(r0, r1):
            t0 = rows[ys0[y] - first]
            t1 = rows[ys1[y] - first]
            a = wy0[y]
            bw = wy1[y]
            for x in range(big_w):
                best[x] = t0[0, x] * a + t1[0, x] * bw
                arg[x] = 0
            for c in range(1, nc):
                for x in range(big_w):
                    v = t0[c, x] * a + t1[c, x] * bw
                    better = v > best[x]
                    best[x] = v if better else best[x]
                    arg[x] = c if better else arg[x]
            for x in range(big_w):
                out[b, y, x] = arg[x]
