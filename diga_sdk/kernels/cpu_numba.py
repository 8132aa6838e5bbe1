"""Numba kernels behind the CPU fast paths: each op is one parallel pass over its pixels.

Imported lazily by `cpu.py` (numba costs ~0.4 s to import, each kernel ~1-3 s to compile once per
dtype combination; `cache=True` keeps the machine code on disk across processes). Arrays come in as
zero-copy numpy views of contiguous torch tensors; outputs are written into preallocated arrays.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

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



_TILE = 64  # feature pixels per task in the register-blocked distance kernel


@njit(cache=True, fastmath={"contract", "reassoc"})
def _tile_sq_distances_pm(feat_t, p0, n, cent64, cnorm, acc):  # pragma: no cover - compiled
    """acc[c, i] = ||f_i||^2 - 2 f_i . c + ||c||^2 in float64 for the pixel-major float32 features
    feat_t[p0 + i] (i < n): two pixels by four classes per sweep over D, eight float64 sums that LLVM
    keeps in vector registers (six loads per eight FMAs, float32 widened in registers)."""
    nc, nd = cent64.shape
    for i in range(0, n, 2):
        a = feat_t[p0 + i]
        b = feat_t[p0 + min(i + 1, n - 1)]
        fa = 0.0
        fb = 0.0
        for d in range(nd):
            av = np.float64(a[d])
            bv = np.float64(b[d])
            fa += av * av
            fb += bv * bv
        c = 0
        while c + 4 <= nc:
            k0 = cent64[c]
            k1 = cent64[c + 1]
            k2 = cent64[c + 2]
            k3 = cent64[c + 3]
            s00 = 0.0
            s01 = 0.0
            s02 = 0.0
            s03 = 0.0
            s10 = 0.0
            s11 = 0.0
            s12 = 0.0
            s13 = 0.0
            for d in range(nd):
                av = np.float64(a[d])
                bv = np.float64(b[d])
                s00 += av * k0[d]
                s01 += av * k1[d]
                s02 += av * k2[d]
                s03 += av * k3[d]
                s10 += bv * k0[d]
                s11 += bv * k1[d]
                s12 += bv * k2[d]
                s13 += bv * k3[d]
            acc[c, i] = fa - 2.0 * s00 + cnorm[c]
            acc[c + 1, i] = fa - 2.0 * s01 + cnorm[c + 1]
            acc[c + 2, i] = fa - 2.0 * s02 + cnorm[c + 2]
            acc[c + 3, i] = fa - 2.0 * s03 + cnorm[c + 3]
            acc[c, i + 1] = fb - 2.0 * s10 + cnorm[c]
            acc[c + 1, i + 1] = fb - 2.0 * s11 + cnorm[c + 1]
            acc[c + 2, i + 1] = fb - 2.0 * s12 + cnorm[c + 2]
            acc[c + 3, i + 1] = fb - 2.0 * s13 + cnorm[c + 3]
            c += 4
        while c < nc:
            k0 = cent64[c]
            s00 = 0.0
            s10 = 0.0
            for d in range(nd):
                s00 += np.float64(a[d]) * k0[d]
                s10 += np.float64(b[d]) * k0[d]
            acc[c, i] = fa - 2.0 * s00 + cnorm[c]
            acc[c, i + 1] = fb - 2.0 * s10 + cnorm[c]
            c += 1


@njit(parallel=True, cache=True)
def lowres_weights(feat, cent, weights, top_label, margin):  # pragma: no cover - compiled
    """feat (B,D,P) f32, cent (C,D) f32 -> weights (B,C,P) = softmax_c(-||f - c||), the argmax (first
    maximum) and the gap between the two largest weights per feature pixel. Distances accumulate in
    float64 (register-blocked on a pixel-major copy of each tile) and
    are rounded to float32 before the softmax, as in the reference."""
    nb, nd, npix = feat.shape
    nc = cent.shape[0]
    nchunk = (npix + _TILE - 1) // _TILE
    cent64 = cent.astype(np.float64)
    cnorm = np.zeros(nc, np.float64)
    for c in range(nc):
        for d in range(nd):
            cnorm[c] += cent64[c, d] * cent64[c, d]
    for job in prange(nb * nchunk):
        b = job // nchunk
        p0 = (job % nchunk) * _TILE
        n = min(_TILE, npix - p0)
        tile_t = np.zeros((_TILE + 1, nd), np.float32)
        for i in range(n):  # strided reads, contiguous writes: measured 4x faster than the other order
            for d in range(nd):
                tile_t[i, d] = feat[b, d, p0 + i]
        acc = np.zeros((nc, _TILE + 1), np.float64)
        _tile_sq_distances_pm(tile_t, 0, n, cent64, cnorm, acc)
        x32 = np.empty((nc, _TILE), np.float32)
        xmax = np.full(_TILE, -np.inf, np.float32)
        for c in range(nc):
            for i in range(_TILE):
                v = -np.float32(np.sqrt(max(acc[c, i], 0.0)))
                x32[c, i] = v
                xmax[i] = max(xmax[i], v)
        total = np.zeros(_TILE, np.float32)
        xbuf = np.empty(_TILE, np.float32)
        bits = np.empty(_TILE, np.int32)
        scale = bits.view(np.float32)
        for c in range(nc):
            for i in range(_TILE):
                xbuf[i] = x32[c, i] - xmax[i]
            _exp_nonpositive(xbuf, bits, scale, _TILE)
            for i in range(_TILE):
                x32[c, i] = xbuf[i]
                total[i] += xbuf[i]
        best = np.full(_TILE, -1.0, np.float32)
        second = np.full(_TILE, -1.0, np.float32)
        arg = np.zeros(_TILE, np.int64)
        for c in range(nc):
            for i in range(_TILE):
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
def class_mix(img_a, img_b, label_a, la_bits, lb_bits, chosen, chosen_bits, ignore_index, out_img,
              out_bits):  # pragma: no cover - compiled
    """One pass: a pixel takes A where label_a is a chosen class or ignore_index, else B.

    Images (B,CH,P) and labels (B,P) come as same-width signed-integer views of their bits, so the
    selection is a branch-free bit blend `(a & m) | (b & ~m)` that vectorises; label_a's own values
    decide the mask. With K <= 63 classes the chosen row is one int64 bit set per sample
    (chosen_bits) and the mask a vectorised variable shift; otherwise chosen (B,K) uint8 is gathered
    at the clamped label. Each task works on 1-D contiguous slices of one block of pixels and keeps
    the mask as int32 (sign-extended to wider images): with 2-D indexing LLVM did not vectorise the
    blend, which ran at a third of the copy rate."""
    nb, nch, npix = img_a.shape
    k = chosen.shape[1]
    nblk = (npix + _MIX_BLOCK - 1) // _MIX_BLOCK
    for job in prange(nb * nblk):
        b = job // nblk
        p0 = (job % nblk) * _MIX_BLOCK
        p1 = min(p0 + _MIX_BLOCK, npix)
        n = p1 - p0
        mask = np.empty(n, np.int32)
        lab, a_bits, b_bits, o_bits = label_a[b, p0:p1], la_bits[b, p0:p1], lb_bits[b, p0:p1], out_bits[b, p0:p1]
        if k <= 63:
            row = chosen_bits[b]
            for i in range(n):
                la = np.int64(lab[i])
                hit = (row >> (la & 63)) & 1
                m = -np.int64((la == ignore_index) | ((hit != 0) & (la >= 0) & (la < k)))
                mask[i] = np.int32(m)
                o_bits[i] = (a_bits[i] & m) | (b_bits[i] & ~m)
        else:
            for i in range(n):
                la = np.int64(lab[i])
                idx = min(max(la, 0), k - 1)
                m = -np.int64((la == ignore_index) | ((chosen[b, idx] != 0) & (la >= 0) & (la < k)))
                mask[i] = np.int32(m)
                o_bits[i] = (a_bits[i] & m) | (b_bits[i] & ~m)
        for ch in range(nch):
            a, bb, o = img_a[b, ch, p0:p1], img_b[b, ch, p0:p1], out_img[b, ch, p0:p1]
            for i in range(n):
                m = mask[i]
                o[i] = (a[i] & m) | (bb[i] & ~m)


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


# --- consensus: per cell row, uniform cells and the candidate classes of the others, then the output rows


@njit(parallel=True, cache=True)
def consensus_cells(weights, top_label, margin, pseudo, out, row_lo, lys, col_lo, lxs, tau,
                    ignore_index):  # pragma: no cover - compiled
    """One task per (sample, cell row cy): the output rows whose upper source row is cy.

    A cell (corners (cy, cx) .. (cy+1, cx+1), clamped at the last row/column) whose four corners share
    their argmax by more than tau in weight is labelled without interpolating (no convex combination
    of them can change the winner, rounding included). In the other cells only candidate classes are
    interpolated: class k can win somewhere in the cell only if its largest corner weight reaches the
    largest smallest-corner weight of any class (times 1 - tau: weights are >= 0 and the blend's
    rounding is a few ulp, relative, far below tau). Candidates keep
    ascending class order and a strict > comparison, so ties keep the lowest class, as a full argmax
    over all classes with the same arithmetic would (bilinear, align_corners=True: rows blended
    first, then columns). `row_lo`/`col_lo` (h+1 / w+1) bound the output rows/columns of each source
    row/column; `lys`/`lxs` hold each output row's/column's weight of the next source row/column."""
    nb, nc, _ = weights.shape
    h = row_lo.shape[0] - 1
    w = col_lo.shape[0] - 1
    for job in prange(nb * h):
        b = job // h
        cy = job % h
        r0 = row_lo[cy]
        r1 = row_lo[cy + 1]
        if r1 <= r0:
            continue
        keep_share = np.float32(1.0) - np.float32(tau)
        y1 = cy + 1 if cy < h - 1 else cy
        kind = np.empty(w, np.int64)
        ncand = np.zeros(w, np.int64)
        cand = np.empty((w, nc), np.int64)
        corner = np.empty((w, nc, 4), np.float32)  # candidate weights at the corners 00, 01, 10, 11
        for cx in range(w):
            if col_lo[cx + 1] <= col_lo[cx]:
                continue
            x1 = cx + 1 if cx < w - 1 else cx
            p00 = cy * w + cx
            p01 = cy * w + x1
            p10 = y1 * w + cx
            p11 = y1 * w + x1
            lab = top_label[b, p00]
            same = (top_label[b, p01] == lab) and (top_label[b, p10] == lab) and (top_label[b, p11] == lab)
            gap = min(min(margin[b, p00], margin[b, p01]), min(margin[b, p10], margin[b, p11]))
            if same and gap > tau:
                kind[cx] = lab
                continue
            kind[cx] = -1
            # a lower bound of the winning weight anywhere in the cell: the largest smallest-corner
            # weight of one class, or the mean over the corners' top classes S of their summed weight
            # at the weakest corner (max over S >= mean over S, and the sum is a convex blend)
            floor = np.float32(0.0)
            for c in range(nc):
                lo = min(min(weights[b, c, p00], weights[b, c, p01]), min(weights[b, c, p10], weights[b, c, p11]))
                floor = max(floor, lo)
            t00 = top_label[b, p00]
            t01 = top_label[b, p01]
            t10 = top_label[b, p10]
            t11 = top_label[b, p11]
            s00 = weights[b, t00, p00]
            s01 = weights[b, t00, p01]
            s10 = weights[b, t00, p10]
            s11 = weights[b, t00, p11]
            s_set = np.empty(4, np.int64)
            s_set[0] = t00
            ns = 1
            for t in (t01, t10, t11):
                seen = False
                for q in range(ns):
                    if s_set[q] == t:
                        seen = True
                if not seen:
                    s_set[ns] = t
                    ns += 1
                    s00 += weights[b, t, p00]
                    s01 += weights[b, t, p01]
                    s10 += weights[b, t, p10]
                    s11 += weights[b, t, p11]
            floor = max(floor, min(min(s00, s01), min(s10, s11)) / np.float32(ns))
            k = 0
            for c in range(nc):
                hi = max(max(weights[b, c, p00], weights[b, c, p01]), max(weights[b, c, p10], weights[b, c, p11]))
                if hi >= floor * keep_share:
                    cand[cx, k] = c
                    corner[cx, k, 0] = weights[b, c, p00]
                    corner[cx, k, 1] = weights[b, c, p01]
                    corner[cx, k, 2] = weights[b, c, p10]
                    corner[cx, k, 3] = weights[b, c, p11]
                    k += 1
            ncand[cx] = k
        big_w = pseudo.shape[2]
        collab = np.empty(big_w, np.int64)  # each column's label where its cell is uniform, else -1
        for cx in range(w):
            for x in range(col_lo[cx], col_lo[cx + 1]):
                collab[x] = kind[cx]
        rowlab = np.empty(big_w, np.int64)
        best = np.empty(big_w, np.float32)
        for y in range(r0, r1):
            ly1 = lys[y]
            ly0 = np.float32(1.0) - ly1
            rowlab[:] = collab
            for cx in range(w):
                if kind[cx] >= 0:
                    continue
                x_lo = col_lo[cx]
                x_hi = col_lo[cx + 1]
                for j in range(ncand[cx]):
                    c = cand[cx, j]
                    left = ly0 * corner[cx, j, 0] + ly1 * corner[cx, j, 2]
                    right = ly0 * corner[cx, j, 1] + ly1 * corner[cx, j, 3]
                    for x in range(x_lo, x_hi):
                        t = lxs[x]
                        v = (np.float32(1.0) - t) * left + t * right
                        better = (j == 0) | (v > best[x])
                        best[x] = v if better else best[x]
                        rowlab[x] = c if better else rowlab[x]
            prow = pseudo[b, y]
            orow = out[b, y]
            for x in range(big_w):  # one vectorised pass over the row: keep where the labels agree
                pl = prow[x]
                keep = (pl != ignore_index) & (np.int64(pl) == rowlab[x])
                orow[x] = pl if keep else ignore_index
