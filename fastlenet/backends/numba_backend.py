"""The Numba backend: direct convolution and pooling as JIT-compiled CPU loops.

Arrays are NumPy arrays in the batch-innermost layout of ``base.py`` ((C, H, W, N)
feature maps), so every innermost loop below runs over images, contiguous in memory,
and LLVM turns it into SIMD code over the batch. Outer loops are ``prange`` over
disjoint outputs (output rows, channels or channel pairs): no two threads ever write the
same element, so there are no races and no atomics; weight gradients are reductions
per (pair of output channels, input channel, kernel row), each owned by one thread.

Every kernel is first a plain Python function (``_conv2d_forward`` ...) and then
wrapped with ``njit``: with ``NUMBA_DISABLE_JIT=1`` the same names are the plain
functions, and ``prange`` is ``range``, so the kernels can be stepped through in a
debugger. ``cache=True`` keeps the machine code on disk, so only the first run pays
the compile (reported once, by :meth:`NumbaBackend.prepare`).

``fastmath`` is limited to ``contract`` (fused multiply-add) and ``reassoc`` (lets the
sums vectorize): neither lets a NaN or an infinity vanish, so a diverging run is still
caught by the trainer's loss check.

Threads: Numba's workers and OpenBLAS's both spin while idle, and on a 2-core machine
the two pools fighting made an epoch 7x slower (measured). So this backend calls no BLAS:
the linear layers' products are its own small GEMM kernel (``_gemm_nt``), which also
runs on both cores where one-thread BLAS would use one.

Memory ownership is as in the NumPy backend: every array a kernel returns or keeps in a
ctx is freshly allocated, so a ctx stays valid until its backward. Two buffers are kept
per shape seen and never leave the call that uses them: the zero-margined copy of dy the
input gradient reads, and the field of zeros warp_bilinear reads when an augmentation has
no elastic displacement.
"""

from __future__ import annotations

import time

import numba
import numpy as np
from numba import prange

from ..errors import ArrayError
from .base import check_window_options, window_out_size
from .numpy_backend import HostBackend

# FMA contraction and reassociated (vectorized) sums only: no nnan/ninf, see above.
_FASTMATH = {"contract", "reassoc"}


# NumPy's error model: a division by zero gives inf or NaN (which the trainer's loss check
# catches) instead of raising ZeroDivisionError, so divisions carry no test-and-branch and
# loops with one vectorize. Under the default Python model Adam's update, which divides
# per element, ran scalar: 110 us for LeNet-5's 61,706 parameters against 9 us.
_OPTIONS = dict(cache=True, fastmath=_FASTMATH, error_model="numpy")


def _jit(func):
    return numba.njit(parallel=True, **_OPTIONS)(func)


# ----------------------------------------------------------------- convolution
# The stride-1 kernels work on two output rows at a time (two output channels in the
# forward, two input channels in the input gradient) or two weight blocks (two output
# channels in the weight gradient), so every input value loaded feeds two sums: measured
# on the 2-core Zen 5 development machine at LeNet-5's shapes, conv2 forward 0.36 -> 0.24
# ms, its weight gradient 0.37 -> 0.21 ms and its input gradient 0.33 -> 0.23 ms per
# batch of 128 (four at a time ran slower: too few registers left for the loads).

def _row_multiply_add(out, src, base, step, wrow):
    """out[m] += sum_q wrow[q] * src[base + q*step + m] for every m < len(out).

    The stride-1 convolution's inner step: for one input row and one kernel row, the
    output row's (j, n) values and the inputs they need are contiguous runs, so the
    row is updated by whole-run multiply-adds (``step`` = N apart, one kernel column q to
    the next), five kernel columns q at a time: the five
    weights sit in registers and each pass reads ``out`` once for five products. (A
    window sum per output value with the window unrolled ran 1.6-2.8x slower: its
    weights were reloaded for every vector of images.) Slices rather than offset
    arithmetic inside the loop let Numba see the indices are in range, so it vectorizes.
    """
    run = out.shape[0]
    KW = wrow.shape[0]
    q = 0
    while q + 5 <= KW:
        w0, w1, w2, w3, w4 = wrow[q], wrow[q + 1], wrow[q + 2], wrow[q + 3], wrow[q + 4]
        x0 = src[base + q * step:base + q * step + run]
        x1 = src[base + (q + 1) * step:base + (q + 1) * step + run]
        x2 = src[base + (q + 2) * step:base + (q + 2) * step + run]
        x3 = src[base + (q + 3) * step:base + (q + 3) * step + run]
        x4 = src[base + (q + 4) * step:base + (q + 4) * step + run]
        for m in range(run):
            out[m] += w0 * x0[m] + w1 * x1[m] + w2 * x2[m] + w3 * x3[m] + w4 * x4[m]
        q += 5
    while q < KW:
        w0 = wrow[q]
        x0 = src[base + q * step:base + q * step + run]
        for m in range(run):
            out[m] += w0 * x0[m]
        q += 1


def _row_multiply_add2(out0, out1, src, base, step, wrow0, wrow1):
    """The same step for two output rows that read the same inputs with their own weights
    (out0 with wrow0, out1 with wrow1): each input loaded feeds both."""
    run = out0.shape[0]
    KW = wrow0.shape[0]
    q = 0
    while q + 5 <= KW:
        a0, a1, a2, a3, a4 = wrow0[q], wrow0[q + 1], wrow0[q + 2], wrow0[q + 3], wrow0[q + 4]
        b0, b1, b2, b3, b4 = wrow1[q], wrow1[q + 1], wrow1[q + 2], wrow1[q + 3], wrow1[q + 4]
        x0 = src[base + q * step:base + q * step + run]
        x1 = src[base + (q + 1) * step:base + (q + 1) * step + run]
        x2 = src[base + (q + 2) * step:base + (q + 2) * step + run]
        x3 = src[base + (q + 3) * step:base + (q + 3) * step + run]
        x4 = src[base + (q + 4) * step:base + (q + 4) * step + run]
        for m in range(run):
            v0, v1, v2, v3, v4 = x0[m], x1[m], x2[m], x3[m], x4[m]
            out0[m] += a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3 + a4 * v4
            out1[m] += b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3 + b4 * v4
        q += 5
    while q < KW:
        a0, b0 = wrow0[q], wrow1[q]
        x0 = src[base + q * step:base + q * step + run]
        for m in range(run):
            out0[m] += a0 * x0[m]
            out1[m] += b0 * x0[m]
        q += 1


_row_multiply_add = numba.njit(**_OPTIONS)(_row_multiply_add)
_row_multiply_add2 = numba.njit(**_OPTIONS)(_row_multiply_add2)


def _conv2d_forward(xpad, w, b, y):
    """Stride 1: y[k, i, j, n] = b[k] + sum_{c,p,q} w[k, c, p, q] * xpad[c, i + p, j + q, n].

    xpad (C, HP, WP, N) already padded; w (K, C, KH, KW); b (K,); y (K, OH, OW, N).
    One task per output row i of a pair of output channels (k, k + 1) (the last channel
    alone when K is odd), taken i-major so consecutive tasks read the same input rows
    while they are in cache.
    """
    K, OH, OW, N = y.shape
    C, HP, WP = xpad.shape[0], xpad.shape[1], xpad.shape[2]
    run = OW * N
    xf = xpad.reshape(C * HP * WP * N)
    yf = y.reshape(K * OH * run)
    pairs = (K + 1) // 2
    for task in prange(OH * pairs):
        i = task // pairs
        k = (task % pairs) * 2
        both = k + 1 < K
        y0 = yf[(k * OH + i) * run:(k * OH + i + 1) * run]
        y1 = yf[((k + 1) * OH + i) * run:((k + 1) * OH + i + 1) * run] if both else y0
        _conv_row_pair(y0, y1, both, xf, w, b, k, i, HP, WP, N)


def _conv_row_pair(y0, y1, both, xf, w, b, k, i, HP, WP, N):
    """Output row i of channel k (y0) and, when ``both``, of channel k + 1 (y1): the bias,
    plus every input channel's KH kernel rows, each input row read once for both."""
    C, KH = w.shape[1], w.shape[2]
    for m in range(y0.shape[0]):
        y0[m] = b[k]
    if both:
        for m in range(y1.shape[0]):
            y1[m] = b[k + 1]
        for c in range(C):
            for p in range(KH):
                _row_multiply_add2(y0, y1, xf, (c * HP + i + p) * WP * N, N, w[k, c, p],
                                   w[k + 1, c, p])
    else:
        for c in range(C):
            for p in range(KH):
                _row_multiply_add(y0, xf, (c * HP + i + p) * WP * N, N, w[k, c, p])


_conv_row_pair = numba.njit(**_OPTIONS)(_conv_row_pair)


def _conv2d_relu_maxpool2d_forward(xpad, w, b, size, y, arg):
    """y = maxpool(relu(conv(xpad) + b)) for a stride-1 convolution and non-overlapping
    size x size windows (pool stride = size), without storing the convolution's output.

    xpad (C, HP, WP, N) already padded; w (K, C, KH, KW); y, arg (K, PH, PW, N) as
    _maxpool2d_forward's with ``relu``. One task per pooled row of a pair of output
    channels (the last alone when K is odd): it computes the ``size`` convolution rows
    under it as _conv2d_forward does, into a scratch block that stays in cache, and pools
    them there. Rows and columns no window covers are not computed. Measured on the 2-core
    Zen 5 at batch 128, as one call against the two kernels called in turn (interleaved,
    several runs): conv1's block 0.13-0.15 ms against 0.17-0.28 ms, conv2's 0.20-0.24 ms
    against 0.20-0.31 ms; the two kernels' cost varies with how fast the machine hands
    out the convolution output's fresh pages.
    """
    K, PH, PW, N = y.shape
    C, HP, WP = xpad.shape[0], xpad.shape[1], xpad.shape[2]
    cols = PW * size * N  # the part of a convolution output row the windows cover
    xf = xpad.reshape(C * HP * WP * N)
    pairs = (K + 1) // 2
    for task in prange(PH * pairs):
        i2 = task // pairs
        k = (task % pairs) * 2
        both = k + 1 < K
        # rows[kk * size + r]: convolution row i2*size + r of channel k + kk
        rows = np.empty((2 * size, cols), dtype=y.dtype)
        for r in range(size):
            _conv_row_pair(rows[r], rows[size + r], both, xf, w, b, k, i2 * size + r, HP, WP, N)
        for kk in range(2 if both else 1):
            for j2 in range(PW):
                yrow = y[k + kk, i2, j2]
                arow = arg[k + kk, i2, j2]
                if size == 2:
                    _pool_window_2x2(rows[2 * kk], rows[2 * kk + 1], j2 * 2 * N, N, yrow, arow)
                else:
                    _pool_window(rows[kk * size:(kk + 1) * size], j2 * size * N, N, yrow, arow,
                                 True)


def _take(v, best):
    """Whether a window's running maximum ``best`` gives way to ``v``: v is larger, or a
    NaN (which then stays). The rule of every max-pool here."""
    return (v > best) | ((v != v) & (best == best))


def _pool_window_2x2(top, bottom, start, N, yrow, arow):
    """One 2x2 window of every image, from two rows of a convolution's output whose
    window columns begin at ``start``: yrow = relu(max), arow = offset of the first max
    (4 where the ReLU zeroes it). All four values of an image are compared in registers
    and written once (the general loop below rewrites yrow per window position: conv1's
    block took 155 us with it against 130 us with this, on the 2-core Zen 5)."""
    a0, a1 = top[start:start + N], top[start + N:start + 2 * N]
    a2, a3 = bottom[start:start + N], bottom[start + N:start + 2 * N]
    for n in range(N):  # slices, and one select per value: both needed to vectorize
        best = a0[n]
        t = 0
        v = a1[n]
        take = _take(v, best)
        best = v if take else best
        t = 1 if take else t
        v = a2[n]
        take = _take(v, best)
        best = v if take else best
        t = 2 if take else t
        v = a3[n]
        take = _take(v, best)
        best = v if take else best
        t = 3 if take else t
        alive = (best > 0) | (best != best)
        yrow[n] = best if alive else 0
        arow[n] = t if alive else 4


def _pool_window(rows, start, N, yrow, arow, relu):
    """One size x size window of every image (size = len(rows)), its columns beginning at
    ``start`` in each of ``rows``: yrow = the max, arow = the offset p*size + q of the first
    maximum in row-major order (a strict '>' keeps the earlier one on ties; a NaN wins and
    stays, so it reaches the loss). With ``relu`` yrow = max(max, 0), and windows whose max
    is <= 0 get the offset size*size, which the backward routes nowhere. One window
    position at a time, each a pass over the images."""
    size = rows.shape[0]
    first = rows[0, start:start + N]
    for n in range(N):
        yrow[n] = first[n]
        arow[n] = 0
    for p in range(size):
        for q in range(size):
            if p == 0 and q == 0:
                continue
            t = p * size + q
            xrow = rows[p, start + q * N:start + (q + 1) * N]
            for n in range(N):  # branch-free: selects vectorize, branches did not
                v = xrow[n]
                best = yrow[n]
                take = _take(v, best)
                yrow[n] = v if take else best
                arow[n] = t if take else arow[n]
    if relu:
        dead = size * size
        for n in range(N):
            alive = (yrow[n] > 0) | (yrow[n] != yrow[n])
            arow[n] = arow[n] if alive else dead
            yrow[n] = yrow[n] if alive else 0


_take = numba.njit(**_OPTIONS)(_take)
_pool_window_2x2 = numba.njit(**_OPTIONS)(_pool_window_2x2)
_pool_window = numba.njit(**_OPTIONS)(_pool_window)


def _conv2d_backward_input(dy_wide, w_flipped, dxpad):
    """Stride 1: dxpad[c, h, x, n] = sum_{k,p,q} w[k, c, p, q] * dy[k, h - p, x - q, n].

    dy_wide (K, OH, OW + 2*(KW-1), N) is dy with KW-1 columns of zeros each side and
    w_flipped (K, C, KH, KW) the weights with q reversed, so with q' = KW-1-q the sum
    over q is dxpad[c, h, x] += sum_q' w_flipped[k, c, p, q'] dy_wide[k, h - p, x + q']:
    the forward kernel's row step. One task per input row h of a pair of input channels
    (c, c + 1) (the last alone when C is odd), which sums only the kernel rows p whose
    output row h - p exists (no work on padding rows).
    """
    K, OH, WW, N = dy_wide.shape
    C, HP, WP = dxpad.shape[0], dxpad.shape[1], dxpad.shape[2]
    KH = w_flipped.shape[2]
    run = WP * N
    dyf = dy_wide.reshape(K * OH * WW * N)
    dxf = dxpad.reshape(C * HP * run)
    pairs = (C + 1) // 2
    for task in prange(pairs * HP):
        c = (task // HP) * 2
        h = task % HP
        row0 = dxf[(c * HP + h) * run:(c * HP + h + 1) * run]
        for m in range(run):
            row0[m] = 0
        if c + 1 < C:
            row1 = dxf[((c + 1) * HP + h) * run:((c + 1) * HP + h + 1) * run]
            for m in range(run):
                row1[m] = 0
            for p in range(KH):
                i = h - p
                if 0 <= i < OH:
                    for k in range(K):
                        _row_multiply_add2(row0, row1, dyf, (k * OH + i) * WW * N, N,
                                           w_flipped[k, c, p], w_flipped[k, c + 1, p])
        else:
            for p in range(KH):
                i = h - p
                if 0 <= i < OH:
                    for k in range(K):
                        _row_multiply_add(row0, dyf, (k * OH + i) * WW * N, N, w_flipped[k, c, p])


def _conv2d_forward_strided(xpad, w, b, stride, y):
    """The same sums for any stride, one image run (N values) at a time: the general
    path (no model in the zoo uses a strided convolution)."""
    K, OH, OW, N = y.shape
    C, KH, KW = w.shape[1], w.shape[2], w.shape[3]
    for task in prange(OH * K):
        i = task // K
        k = task % K
        for j in range(OW):
            yrow = y[k, i, j]
            for n in range(N):
                yrow[n] = b[k]
            for c in range(C):
                for p in range(KH):
                    for q in range(KW):
                        wv = w[k, c, p, q]
                        xrow = xpad[c, i * stride + p, j * stride + q]
                        for n in range(N):
                            yrow[n] += wv * xrow[n]


def _conv2d_backward_weights(xpad, dy, dw, db):
    """Stride 1: dw[k, c, p, q] = sum_{i,j,n} dy[k, i, j, n] * xpad[c, i + p, j + q, n];
    db[k] = sum dy[k] (db has length 0 when the layer has no bias).

    One task per (pair of output channels k, k + 1; input channel c; kernel row p): each
    owns two rows of KW weights of dw, so the sum over the batch needs neither partial
    buffers nor atomics. (With a task per (k, c) pair, conv1 had 3 tasks, split 2:1 over
    two threads: splitting over p too took its weight gradient from 0.150 to 0.124 ms per
    batch of 128 on the 2-core Zen 5; conv2's is unchanged.) With stride 1, for fixed
    (i, p, q) the (j, n) pairs of dy and of x are both one contiguous run of OW*N values,
    so each term is a dot product of two runs; five q of both channels (ten sums) share
    every load of x and of the two dy rows. The last
    channel of an odd K, and the columns left over, go one at a time.
    """
    K, OH, OW, N = dy.shape
    C, HP, WP = xpad.shape[0], xpad.shape[1], xpad.shape[2]
    KH, KW = dw.shape[2], dw.shape[3]
    run = OW * N
    xf = xpad.reshape(C * HP * WP * N)
    dyf = dy.reshape(K * OH * run)
    zero = dw.dtype.type(0)
    pairs = (K + 1) // 2
    for task in prange(pairs * C * KH):
        k = (task // (C * KH)) * 2
        c = (task // KH) % C
        p = task % KH
        both = k + 1 < K
        q = 0
        while both and q + 5 <= KW:
            a0 = a1 = a2 = a3 = a4 = b0 = b1 = b2 = b3 = b4 = zero
            for i in range(OH):
                d0 = dyf[(k * OH + i) * run:(k * OH + i + 1) * run]
                d1 = dyf[((k + 1) * OH + i) * run:((k + 1) * OH + i + 1) * run]
                base = (c * HP + i + p) * WP * N + q * N
                x0 = xf[base:base + run]
                x1 = xf[base + N:base + N + run]
                x2 = xf[base + 2 * N:base + 2 * N + run]
                x3 = xf[base + 3 * N:base + 3 * N + run]
                x4 = xf[base + 4 * N:base + 4 * N + run]
                for m in range(run):
                    e0, e1 = d0[m], d1[m]
                    v0, v1, v2, v3, v4 = x0[m], x1[m], x2[m], x3[m], x4[m]
                    a0 += e0 * v0
                    a1 += e0 * v1
                    a2 += e0 * v2
                    a3 += e0 * v3
                    a4 += e0 * v4
                    b0 += e1 * v0
                    b1 += e1 * v1
                    b2 += e1 * v2
                    b3 += e1 * v3
                    b4 += e1 * v4
            dw[k, c, p, q], dw[k, c, p, q + 1], dw[k, c, p, q + 2] = a0, a1, a2
            dw[k, c, p, q + 3], dw[k, c, p, q + 4] = a3, a4
            dw[k + 1, c, p, q], dw[k + 1, c, p, q + 1], dw[k + 1, c, p, q + 2] = b0, b1, b2
            dw[k + 1, c, p, q + 3], dw[k + 1, c, p, q + 4] = b3, b4
            q += 5
        while q < KW:
            for kk in range(k, min(k + 2, K)):
                acc = zero
                for i in range(OH):
                    drow = dyf[(kk * OH + i) * run:(kk * OH + i + 1) * run]
                    base = (c * HP + i + p) * WP * N + q * N
                    x0 = xf[base:base + run]
                    for m in range(run):
                        acc += drow[m] * x0[m]
                dw[kk, c, p, q] = acc
            q += 1
        if c == 0 and p == 0 and db.shape[0] > 0:
            for kk in range(k, min(k + 2, K)):
                acc = zero
                flat = dyf[kk * OH * run:(kk + 1) * OH * run]
                for m in range(OH * run):
                    acc += flat[m]
                db[kk] = acc


def _conv2d_backward_weights_strided(xpad, dy, stride, dw, db):
    """The same sums for any stride, one image run (N values) at a time: the general
    path (no model in the zoo uses a strided convolution)."""
    K, OH, OW, N = dy.shape
    C, KH, KW = dw.shape[1], dw.shape[2], dw.shape[3]
    zero = dw.dtype.type(0)
    for task in prange(K * C):
        k = task // C
        c = task % C
        for p in range(KH):
            for q in range(KW):
                acc = zero
                for i in range(OH):
                    for j in range(OW):
                        drow = dy[k, i, j]
                        xrow = xpad[c, i * stride + p, j * stride + q]
                        for n in range(N):
                            acc += drow[n] * xrow[n]
                dw[k, c, p, q] = acc
        if c == 0 and db.shape[0] > 0:
            acc = zero
            for i in range(OH):
                for j in range(OW):
                    drow = dy[k, i, j]
                    for n in range(N):
                        acc += drow[n]
            db[k] = acc


# ----------------------------------------------------------------- dense layers
def _gemm_nt(a, b, bias, out):
    """out[r, s] = bias[r] + sum_k a[r, k] * b[s, k] for k < L: A @ B.T with both
    operands' rows contiguous along the summed axis (bias of length 0: none).

    The linear layers' three products, each given as rows that are contiguous along the
    summed axis: y = w @ x is gemm_nt(w, x.T), dx = w.T @ dy is gemm_nt(w.T, dy.T) and
    dw = dy @ x.T is gemm_nt(dy, x). One task per 4 x 4 block of out: its 16 sums are
    dot products that share every load (4 rows of a, 4 of b: 8 loads for 16
    multiply-adds), which LLVM vectorizes along k; blocks at the edges sum one at a time.
    """
    R, L = a.shape
    S = b.shape[0]
    zero = out.dtype.type(0)
    blocks = (S + 3) // 4
    for task in prange(((R + 3) // 4) * blocks):
        r0 = (task // blocks) * 4
        s0 = (task % blocks) * 4
        if r0 + 4 <= R and s0 + 4 <= S:
            a0, a1, a2, a3 = a[r0], a[r0 + 1], a[r0 + 2], a[r0 + 3]
            b0, b1, b2, b3 = b[s0], b[s0 + 1], b[s0 + 2], b[s0 + 3]
            c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = zero
            c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = zero
            for k in range(L):
                x0, x1, x2, x3 = a0[k], a1[k], a2[k], a3[k]
                y0, y1, y2, y3 = b0[k], b1[k], b2[k], b3[k]
                c00 += x0 * y0
                c01 += x0 * y1
                c02 += x0 * y2
                c03 += x0 * y3
                c10 += x1 * y0
                c11 += x1 * y1
                c12 += x1 * y2
                c13 += x1 * y3
                c20 += x2 * y0
                c21 += x2 * y1
                c22 += x2 * y2
                c23 += x2 * y3
                c30 += x3 * y0
                c31 += x3 * y1
                c32 += x3 * y2
                c33 += x3 * y3
            out[r0, s0], out[r0, s0 + 1], out[r0, s0 + 2], out[r0, s0 + 3] = c00, c01, c02, c03
            out[r0 + 1, s0], out[r0 + 1, s0 + 1], out[r0 + 1, s0 + 2], out[r0 + 1, s0 + 3] = \
                c10, c11, c12, c13
            out[r0 + 2, s0], out[r0 + 2, s0 + 1], out[r0 + 2, s0 + 2], out[r0 + 2, s0 + 3] = \
                c20, c21, c22, c23
            out[r0 + 3, s0], out[r0 + 3, s0 + 1], out[r0 + 3, s0 + 2], out[r0 + 3, s0 + 3] = \
                c30, c31, c32, c33
        else:
            for r in range(r0, min(r0 + 4, R)):
                for s in range(s0, min(s0 + 4, S)):
                    acc = zero
                    for k in range(L):
                        acc += a[r, k] * b[s, k]
                    out[r, s] = acc
        if bias.shape[0] > 0:
            for r in range(r0, min(r0 + 4, R)):
                for s in range(s0, min(s0 + 4, S)):
                    out[r, s] += bias[r]


def _row_sums(a, out):
    """out[r] = sum_k a[r, k]: a bias gradient."""
    for r in range(a.shape[0]):
        acc = out.dtype.type(0)
        for k in range(a.shape[1]):
            acc += a[r, k]
        out[r] = acc


# ---------------------------------------------------------------------- pooling
# Inner loops run over the images of one (c, row, column) position through row views
# (``x[c, r, col]``, N contiguous values), which Numba vectorizes.

def _maxpool2d_forward(x, size, stride, relu, y, arg):
    """y[c, i, j, n] = max of the window at (i*s, j*s) and arg its first maximum's offset,
    as _pool_window defines them (with ``relu``, of the ReLU's output). x contiguous.

    One task per output row (c, i).
    """
    C, OH, OW, N = y.shape
    H, W = x.shape[1], x.shape[2]
    planes = x.reshape(C, H, W * N)
    for task in prange(C * OH):
        c = task // OH
        i = task % OH
        rows = planes[c, i * stride:i * stride + size]
        for j in range(OW):
            _pool_window(rows, j * stride * N, N, y[c, i, j], arg[c, i, j], relu)


def _maxpool2d_backward(dy, arg, size, dx):
    """dx[c, i*size + p, j*size + q, n] = dy[c, i, j, n] if arg[c, i, j, n] == p*size + q,
    else 0, for windows that tile dx exactly (stride == size, no leftover rows or
    columns, as in LeNet-5): every position of dx belongs to one window and is written
    once. One task per output row (c, i).
    """
    C, OH, OW, N = dy.shape
    for task in prange(C * OH):
        c = task // OH
        i = task % OH
        for j in range(OW):
            drow = dy[c, i, j]
            arow = arg[c, i, j]
            for p in range(size):
                for q in range(size):
                    t = p * size + q
                    xrow = dx[c, i * size + p, j * size + q]
                    for n in range(N):
                        xrow[n] = drow[n] if arow[n] == t else 0


def _maxpool2d_backward_general(dy, arg, size, stride, dx):
    """The same routing for any windows (overlapping, gaps, leftovers): one task per
    channel zeroes its plane and adds, so overlapping windows accumulate race-free. A
    kernel of its own, so the common case compiles without it."""
    C, OH, OW, N = dy.shape
    H, W = dx.shape[1], dx.shape[2]
    for c in prange(C):
        plane = dx[c].reshape(H * W * N)
        for m in range(H * W * N):
            plane[m] = 0
        for i in range(OH):
            for j in range(OW):
                drow = dy[c, i, j]
                arow = arg[c, i, j]
                for p in range(size):
                    for q in range(size):
                        t = p * size + q
                        xrow = dx[c, i * stride + p, j * stride + q]
                        for n in range(N):
                            xrow[n] += drow[n] if arow[n] == t else 0


def _avgpool2d_forward(x, size, stride, y):
    """y[c, i, j, n] = mean of the size x size window at (i*s, j*s); a task per row (c, i)."""
    C, OH, OW, N = y.shape
    scale = y.dtype.type(1.0 / (size * size))
    for task in prange(C * OH):
        c = task // OH
        i = task % OH
        for j in range(OW):
            yrow = y[c, i, j]
            for n in range(N):
                yrow[n] = 0
            for p in range(size):
                for q in range(size):
                    xrow = x[c, i * stride + p, j * stride + q]
                    for n in range(N):
                        yrow[n] += xrow[n]
            for n in range(N):
                yrow[n] *= scale


def _avgpool2d_backward(dy, size, stride, dx):
    """dx[c, i*s + p, j*s + q, n] += dy[c, i, j, n] / size**2, one task per channel."""
    C, OH, OW, N = dy.shape
    H, W = dx.shape[1], dx.shape[2]
    scale = dy.dtype.type(1.0 / (size * size))
    for c in prange(C):
        plane = dx[c].reshape(H * W * N)
        for m in range(H * W * N):
            plane[m] = 0
        for i in range(OH):
            for j in range(OW):
                drow = dy[c, i, j]
                for p in range(size):
                    for q in range(size):
                        xrow = dx[c, i * stride + p, j * stride + q]
                        for n in range(N):
                            xrow[n] += scale * drow[n]


# ----------------------------------------------------------------------- layout
def _batch_last(x, index, out):
    """out[f, n] = x[index[n], f] for x (M, F): the samples ``index`` picks (a training
    batch, gathered without a copy of its own: 0.04 ms per LeNet-5 batch saved), in the
    transposed layout. The copy goes in blocks of 16 features, so each sample's read is
    one contiguous run and each feature row is written in order. Negative indices count
    from the end, as in NumPy. Serial: a batch of LeNet-5 images is 0.1 ms of copying, and
    a parallel version over the feature blocks ran slower (0.10 -> 0.15 ms)."""
    M, F = x.shape
    N = index.shape[0]
    rows = np.empty(N, np.int64)
    for n in range(N):
        r = index[n] + M if index[n] < 0 else index[n]
        if r < 0 or r >= M:
            raise IndexError("to_batch_last: a sample index is out of range")
        rows[n] = r
    for block in range((F + 15) // 16):
        start = block * 16
        stop = min(start + 16, F)
        for n in range(N):
            xrow = x[rows[n], start:stop]
            for f in range(stop - start):
                out[start + f, n] = xrow[f]


# ------------------------------------------------------------ loss and optimizer
def _softmax_cross_entropy(logits, labels, smoothing, losses, grad):
    """Per column n of logits (K, N): losses[n] = logsumexp(z) - sum_k q_k z_k and
    grad[:, n] = (softmax(z) - q) / N, with q = (1 - s) onehot(label) + s / K.

    Both from one pass over the shifted logits z - max z, so exp never overflows.
    """
    K, N = logits.shape
    off = smoothing / K
    for n in range(N):
        top = logits[0, n]
        for k in range(1, K):
            top = max(top, logits[k, n])
        total = 0.0
        mean_shift = 0.0
        for k in range(K):
            e = np.exp(logits[k, n] - top)
            grad[k, n] = e
            total += e
            mean_shift += logits[k, n] - top
        label = labels[n]
        losses[n] = (np.log(total) - (1.0 - smoothing) * (logits[label, n] - top)
                     - off * mean_shift)
        for k in range(K):
            grad[k, n] = (grad[k, n] / total - off) / N
        grad[label, n] -= (1.0 - smoothing) / N


def _adam_update(p, g, m, v, beta1, rest1, beta2, rest2, eps, shrink, step_size, inv_bias2):
    """AdamW on flat arrays, in place, in one pass (formula in base.Backend.adam_update),
    with the scalar factors precomputed: rest = 1 - beta, shrink = 1 - lr * wd,
    step_size = lr / (1 - beta1^t), inv_bias2 = 1 / (1 - beta2^t)."""
    for t in range(p.shape[0]):
        gt = g[t]
        mt = beta1 * m[t] + rest1 * gt
        vt = beta2 * v[t] + rest2 * (gt * gt)
        m[t] = mt
        v[t] = vt
        p[t] = p[t] * shrink - step_size * mt / (np.sqrt(vt * inv_bias2) + eps)


def _separable_filter(a, gh, gw, tmp, out):
    """out[f, :, :, n] = gh @ a[f, :, :, n] @ gw.T for every map f and image n.

    Two passes of the convolution's row step, each vectorized over the images and each
    filling two outputs per input load: along H, rows (f, i) and (f, i + 1) of tmp (W*N
    contiguous values) are sums of a's rows (f, p) weighted by gh[i, p] and gh[i + 1, p];
    along W, pixels (f, i, j) and (f, i, j + 1) of out (N values each) are sums of tmp's
    pixels (f, i, q) weighted by gw[j, q] and gw[j + 1, q].
    """
    F, H, W, N = a.shape
    run = W * N
    af = a.reshape(F * H * run)
    tf = tmp.reshape(F * H * run)
    of = out.reshape(F * H * run)
    row_pairs = (H + 1) // 2
    for task in prange(F * row_pairs):
        f = task // row_pairs
        i = (task % row_pairs) * 2
        row0 = tf[(f * H + i) * run:(f * H + i + 1) * run]
        for m in range(run):
            row0[m] = 0
        if i + 1 < H:
            row1 = tf[(f * H + i + 1) * run:(f * H + i + 2) * run]
            for m in range(run):
                row1[m] = 0
            _row_multiply_add2(row0, row1, af, f * H * run, run, gh[i], gh[i + 1])
        else:
            _row_multiply_add(row0, af, f * H * run, run, gh[i])
    for task in prange(F * H):
        row = tf[task * run:(task + 1) * run]
        for j in range(0, W, 2):
            pixel0 = of[task * run + j * N:task * run + (j + 1) * N]
            for n in range(N):
                pixel0[n] = 0
            if j + 1 < W:
                pixel1 = of[task * run + (j + 1) * N:task * run + (j + 2) * N]
                for n in range(N):
                    pixel1[n] = 0
                _row_multiply_add2(pixel0, pixel1, row, 0, N, gw[j], gw[j + 1])
            else:
                _row_multiply_add(pixel0, row, 0, N, gw[j])


def _warp_bilinear(padded, coeffs, displacement, out):
    """out[c, i, j, n] = padded[c] read bilinearly at image n's source point for (i, j),
    as defined by base.Backend.warp_bilinear: the affine map coeffs[:, n] plus
    displacement[:, i, j, n] (a (2, H, W, N) array of zeros when there is none), in the
    coordinates of ``padded`` (C, H + 2, W + 2, N), the images with a one-pixel border of
    background, clipped into it.

    For each output pixel (i, j), a first loop over the images builds their source
    points (the top-left neighbour's index and the two weights), then a loop per channel
    gathers the four neighbours: with the border every neighbour is a valid index, so
    neither loop branches and both vectorize (the second with gathers). Constants are in
    the arrays' dtype, so float32 arithmetic stays float32. One task per output row i.
    (One loop doing both, with the channel loop inside, ran scalar: 4.5x slower.)
    """
    C, H, W, N = out.shape
    row = (W + 2) * N  # index step of one row down in padded
    plane = (H + 2) * row
    flat = padded.reshape(C * plane)
    T = out.dtype.type
    zero, one = T(0), T(1)
    x_border, y_border = T(W + 1), T(H + 1)
    x_last, y_last = T(W), T(H)
    for i in prange(H):
        index = np.empty(N, np.int64)
        wx = np.empty(N, out.dtype)
        wy = np.empty(N, out.dtype)
        fi = T(i)
        for j in range(W):
            fj = T(j)
            for n in range(N):  # padded coordinates: the image spans [1, W], the border 0, W + 1
                fx = coeffs[0, n] * fj + coeffs[1, n] * fi + coeffs[2, n] + displacement[0, i, j, n] + one
                fy = coeffs[3, n] * fj + coeffs[4, n] * fi + coeffs[5, n] + displacement[1, i, j, n] + one
                fx = min(max(fx, zero), x_border)
                fy = min(max(fy, zero), y_border)
                x0 = min(np.floor(fx), x_last)
                y0 = min(np.floor(fy), y_last)
                wx[n] = fx - x0
                wy[n] = fy - y0
                index[n] = (np.int64(y0) * (W + 2) + np.int64(x0)) * N + n
            for c in range(C):
                src = flat[c * plane:(c + 1) * plane]
                pixel = out[c, i, j]
                for n in range(N):
                    k = index[n]
                    top = src[k] + wx[n] * (src[k + N] - src[k])
                    bottom = src[k + row] + wx[n] * (src[k + row + N] - src[k + row])
                    pixel[n] = top + wy[n] * (bottom - top)


# Serial kernels: the batch copy, the loss and one Adam update are microseconds of work,
# less than waking the thread pool costs.
_serial = numba.njit(**_OPTIONS)

_KERNELS = {
    "conv2d_forward": _jit(_conv2d_forward),
    "conv2d_forward_strided": _jit(_conv2d_forward_strided),
    "conv2d_backward_weights": _jit(_conv2d_backward_weights),
    "conv2d_backward_input": _jit(_conv2d_backward_input),
    "conv2d_relu_maxpool2d_forward": _jit(_conv2d_relu_maxpool2d_forward),
    "conv2d_backward_weights_strided": _jit(_conv2d_backward_weights_strided),
    "batch_last": _serial(_batch_last),
    "maxpool2d_forward": _jit(_maxpool2d_forward),
    "maxpool2d_backward": _jit(_maxpool2d_backward),
    "maxpool2d_backward_general": _jit(_maxpool2d_backward_general),
    "avgpool2d_forward": _jit(_avgpool2d_forward),
    "avgpool2d_backward": _jit(_avgpool2d_backward),
    "gemm_nt": _jit(_gemm_nt),
    "row_sums": _serial(_row_sums),
    "separable_filter": _jit(_separable_filter),
    "warp_bilinear": _jit(_warp_bilinear),
    "softmax_cross_entropy": _serial(_softmax_cross_entropy),
    "adam_update": _serial(_adam_update),
}


class NumbaBackend(HostBackend):
    """NumPy arrays, Numba kernels. Every kernel of a training step is its own, except
    the conv block's backward, base.Backend's chain of this backend's max-pool and
    convolution backwards (and its forward where the convolution is strided or the
    windows overlap or leave gaps); softmax (inference only) and from_batch_last are the
    generic ones of base.Backend."""

    name = "numba"

    def __init__(self):
        self._prepared: set[str] = set()
        self._buffers: dict[tuple, np.ndarray] = {}

    def _widened(self, dy, margin: int):
        """dy (K, OH, OW, N) with ``margin`` columns of zeros each side, in a buffer kept
        per shape: its margins are zeroed once, and only the middle is rewritten each call.
        The buffer never leaves the call that fills it (it is not kept in any ctx)."""
        K, OH, OW, N = dy.shape
        shape = (K, OH, OW + 2 * margin, N)
        # the margin is in the key: another kernel width with the same widened width
        # would find a buffer whose margins hold its own dy
        key = ("widened", shape, margin, dy.dtype.str)
        if key not in self._buffers:
            self._buffers[key] = np.zeros(shape, dtype=dy.dtype)
        wide = self._buffers[key]
        wide[:, :, margin:margin + OW] = dy
        return wide

    def prepare(self, dtype) -> str | None:
        """Compile (or load from Numba's disk cache) the kernels of a training step of any
        zoo model for ``dtype`` by running each once on a tiny input; the first call per
        dtype says so when it compiled (9.9-10.3 s cold on the 2-core Zen 5; about 8 s for
        LeNet-5's own kernels, the rest for the plain convolution and max-pool that
        ``compact`` runs). The rarer kernels (average pooling, strided convolutions)
        compile on first use."""
        dtype = np.dtype(dtype)
        if dtype.name in self._prepared:
            return None
        tick = time.perf_counter()
        misses_before = _cache_misses()
        self._exercise(dtype)
        self._prepared.add(dtype.name)
        if _cache_misses() == misses_before:
            return None
        return (f"numba: compiled the {dtype.name} kernels in {time.perf_counter() - tick:.1f} s "
                "(first run only; later runs load them from Numba's cache)")

    def _exercise(self, dtype) -> None:
        """One call of every kernel, with argument types the real calls use."""
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 6, 6, 3)).astype(dtype)
        w = rng.standard_normal((2, 2, 3, 3)).astype(dtype)
        self.to_batch_last(x)
        pooled, ctx = self.conv2d_relu_maxpool2d_forward(x, w, w[:, 0, 0, 0].copy(), 1, 1, 2, 2)
        self.conv2d_relu_maxpool2d_backward(pooled, ctx)
        # a convolution and a max-pool on their own: models with BatchNorm between them
        self.relu_maxpool2d_forward(self.conv2d_forward(x, w, None, 1, 1)[0], 2, 2)
        y, ctx = self.linear_forward(x.reshape(-1, 3), rng.standard_normal((5, 72)).astype(dtype),
                                     rng.standard_normal(5).astype(dtype))
        self.linear_backward(y, ctx)
        logits = rng.standard_normal((3, 4)).astype(dtype)
        self.softmax_cross_entropy(logits, np.arange(4) % 3, 0.1)
        p = rng.standard_normal(5).astype(dtype)
        self.adam_update(p, p.copy(), np.zeros_like(p), np.zeros_like(p), lr=1e-3, beta1=0.9,
                         beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)

    def to_batch_last(self, x_nchw, index=None):
        x = np.ascontiguousarray(x_nchw)
        M = x.shape[0]
        if index is None:
            index = np.arange(M)
        index = np.asarray(index)
        if index.ndim != 1 or index.dtype.kind not in "iu":
            raise ArrayError(f"to_batch_last: index must be a 1-d integer array, got "
                             f"{index.dtype} of shape {index.shape}")
        N = len(index)
        out = np.empty((x.size // max(M, 1), N), dtype=x.dtype)
        _KERNELS["batch_last"](x.reshape(M, -1), index.astype(np.int64, copy=False), out)
        return out.reshape(*x.shape[1:], N)

    # --------------------------------------------------------------- convolution
    def conv2d_forward(self, x, w, b, stride: int, pad: int):
        OH, OW = self.check_conv2d(x, w, b, stride, pad)
        xpad, w, bias, ctx = _conv_operands(x, w, b, stride, pad)
        y = np.empty((w.shape[0], OH, OW, x.shape[3]), dtype=x.dtype)
        if stride == 1:
            _KERNELS["conv2d_forward"](xpad, w, bias, y)
        else:
            _KERNELS["conv2d_forward_strided"](xpad, w, bias, stride, y)
        return y, ctx

    def conv2d_backward(self, dy, ctx, need_dx: bool = True):
        xpad, w, x_shape, stride, pad, has_bias = ctx
        dy = np.ascontiguousarray(dy)
        K, C, KH, KW = w.shape
        dw = np.empty_like(w)
        db = np.empty(K if has_bias else 0, dtype=dy.dtype)
        if stride == 1:
            _KERNELS["conv2d_backward_weights"](xpad, dy, dw, db)
        else:
            _KERNELS["conv2d_backward_weights_strided"](xpad, dy, stride, dw, db)
        if C == 0 and has_bias:  # the kernels sum db in their channel-0 tasks: none here
            _KERNELS["row_sums"](dy.reshape(K, -1), db)
        db = db if has_bias else None
        if not need_dx:
            return None, dw, db
        _, OH, OW, N = dy.shape
        if stride > 1:
            # the gradient of a strided convolution is that of a stride-1 one whose dy
            # is spread out with zeros between the outputs
            spread = np.zeros((K, (OH - 1) * stride + 1, (OW - 1) * stride + 1, N), dtype=dy.dtype)
            spread[:, ::stride, ::stride] = dy
            dy = spread
        dy_wide = self._widened(dy, KW - 1)
        w_flipped = np.ascontiguousarray(w[:, :, :, ::-1])
        _, H, W, _ = x_shape
        # rows and columns no window reached (stride > 1 leftovers) get no gradient
        covered = (C, dy.shape[1] + KH - 1, dy.shape[2] + KW - 1, N)
        dxpad = np.empty(covered, dtype=dy.dtype)
        _KERNELS["conv2d_backward_input"](dy_wide, w_flipped, dxpad)
        HC, WC = min(covered[1] - pad, H), min(covered[2] - pad, W)
        if HC == H and WC == W:
            return np.ascontiguousarray(dxpad[:, pad:pad + H, pad:pad + W]), dw, db
        dx = np.zeros(x_shape, dtype=dy.dtype)
        dx[:, :HC, :WC] = dxpad[:, pad:pad + HC, pad:pad + WC]
        return dx, dw, db

    def conv2d_relu_maxpool2d_forward(self, x, w, b, stride: int, pad: int, size: int,
                                      pool_stride: int):
        OH, OW = self.check_conv2d(x, w, b, stride, pad)
        check_window_options("pool2d", "size", size, pool_stride, 0)
        if stride != 1 or pool_stride != size:  # overlapping or gapped windows: chained
            return super().conv2d_relu_maxpool2d_forward(x, w, b, stride, pad, size, pool_stride)
        K, N = w.shape[0], x.shape[3]
        PH, PW = window_out_size(OH, size, size), window_out_size(OW, size, size)
        xpad, w, bias, conv_ctx = _conv_operands(x, w, b, stride, pad)
        y = np.empty((K, PH, PW, N), dtype=x.dtype)
        arg = np.empty((K, PH, PW, N), dtype=np.int32)
        _KERNELS["conv2d_relu_maxpool2d_forward"](xpad, w, bias, size, y, arg)
        # the contexts conv2d_backward and maxpool2d_backward read, as the chain's
        return y, (conv_ctx, (arg, (K, OH, OW, N), size, size))

    # ------------------------------------------------------------------- pooling
    def _maxpool(self, x, size: int, stride: int, relu: bool):
        OH, OW = self.check_pool2d(x, size, stride)
        x = np.ascontiguousarray(x)
        C, _, _, N = x.shape
        y = np.empty((C, OH, OW, N), dtype=x.dtype)
        # int32 offsets, as wide as the float32 values they are selected with: with uint8
        # the selects did not vectorize and the kernel ran 7x slower (measured)
        arg = np.empty((C, OH, OW, N), dtype=np.int32)
        _KERNELS["maxpool2d_forward"](x, size, stride, relu, y, arg)
        return y, (arg, x.shape, size, stride)

    def maxpool2d_forward(self, x, size: int, stride: int):
        return self._maxpool(x, size, stride, relu=False)

    def relu_maxpool2d_forward(self, x, size: int, stride: int):
        return self._maxpool(x, size, stride, relu=True)

    def maxpool2d_backward(self, dy, ctx):
        arg, x_shape, size, stride = ctx
        dy = np.ascontiguousarray(dy)
        dx = np.empty(x_shape, dtype=dy.dtype)
        _, H, W, _ = x_shape
        if stride == size and H == dy.shape[1] * size and W == dy.shape[2] * size:
            _KERNELS["maxpool2d_backward"](dy, arg, size, dx)
        else:
            _KERNELS["maxpool2d_backward_general"](dy, arg, size, stride, dx)
        return dx

    def relu_maxpool2d_backward(self, dy, ctx):
        return self.maxpool2d_backward(dy, ctx)

    def avgpool2d_forward(self, x, size: int, stride: int):
        OH, OW = self.check_pool2d(x, size, stride)
        x = np.ascontiguousarray(x)
        C, _, _, N = x.shape
        y = np.empty((C, OH, OW, N), dtype=x.dtype)
        _KERNELS["avgpool2d_forward"](x, size, stride, y)
        return y, (x.shape, size, stride)

    def avgpool2d_backward(self, dy, ctx):
        x_shape, size, stride = ctx
        dx = np.empty(x_shape, dtype=dy.dtype)
        _KERNELS["avgpool2d_backward"](np.ascontiguousarray(dy), size, stride, dx)
        return dx

    def separable_filter(self, a, gh, gw):
        self.check_separable_filter(a, gh, gw)
        a = np.ascontiguousarray(a)
        tmp, out = np.empty_like(a), np.empty_like(a)
        _KERNELS["separable_filter"](a, np.ascontiguousarray(gh), np.ascontiguousarray(gw), tmp, out)
        return out

    def warp_bilinear(self, x, coeffs, displacement, background: float):
        self.check_warp(x, coeffs, displacement)
        C, H, W, N = x.shape
        if displacement is None:  # one kernel for both: a field of zeros, kept per shape
            key = ("no displacement", x.shape, x.dtype.str)
            if key not in self._buffers:
                self._buffers[key] = np.zeros((2, H, W, N), dtype=x.dtype)
            displacement = self._buffers[key]
        padded = np.empty((C, H + 2, W + 2, N), dtype=x.dtype)
        padded[:, 0], padded[:, -1], padded[:, 1:-1, 0], padded[:, 1:-1, -1] = (background,) * 4
        padded[:, 1:-1, 1:-1] = x
        out = np.empty(x.shape, dtype=x.dtype)
        _KERNELS["warp_bilinear"](padded, np.ascontiguousarray(coeffs),
                                  np.ascontiguousarray(displacement), out)
        return out

    # ------------------------------------------------------- linear, loss, Adam
    def _gemm_nt(self, a, b, bias=None):
        """a @ b.T (+ bias[:, None]) for a (R, K), b (S, K): a new (R, S) array."""
        out = np.empty((a.shape[0], b.shape[0]), dtype=a.dtype)
        _KERNELS["gemm_nt"](_rows(a), _rows(b),
                            np.zeros(0, a.dtype) if bias is None else np.ascontiguousarray(bias),
                            out)
        return out

    def linear_forward(self, x, w, b):
        self.check_linear(x, w, b)
        # x.T copied to rows: 51,200 values for LeNet-5's first, far less than the product
        return self._gemm_nt(w, x.T, b), (x, w, b is not None)

    def linear_backward(self, dy, ctx, need_dx: bool = True):
        x, w, has_bias = ctx
        dy = np.ascontiguousarray(dy)
        dw = self._gemm_nt(dy, x)
        db = None
        if has_bias:
            db = np.empty(dy.shape[0], dtype=dy.dtype)
            _KERNELS["row_sums"](dy, db)
        dx = self._gemm_nt(w.T, dy.T) if need_dx else None
        return dx, dw, db

    def softmax_cross_entropy(self, logits, labels, label_smoothing: float = 0.0):
        self.check_loss(logits, labels)
        logits = np.ascontiguousarray(logits)
        losses = np.empty(logits.shape[1], dtype=np.float64)
        grad = np.empty_like(logits)
        _KERNELS["softmax_cross_entropy"](logits, np.ascontiguousarray(labels, dtype=np.int64),
                                          float(label_smoothing), losses, grad)
        return np.asarray(losses.mean(), dtype=logits.dtype), grad

    def adam_update_device(self, p, g, m, v, factors, *, beta1: float, beta2: float,
                           eps: float, weight_decay: float) -> None:
        self.check_adam(p, g, m, v)
        # The factors live in host memory here, so they are read and passed as scalars:
        # the reciprocal 1 / bias2 computed in the kernel made LLVM divide per element
        # (measured 1.5x slower). Constants in float64, then in the parameters' dtype, so
        # float32 runs in float32 as the generic update does.
        f = p.dtype.type
        decay, step_size, bias2 = (float(x) for x in factors)
        _KERNELS["adam_update"](p.reshape(-1), np.ascontiguousarray(g).reshape(-1),
                                m.reshape(-1), v.reshape(-1), f(beta1), f(1.0 - beta1),
                                f(beta2), f(1.0 - beta2), f(eps),
                                f(decay if weight_decay else 1.0), f(step_size), f(1.0 / bias2))


def _rows(a):
    """a (R, K) as contiguous rows for _gemm_nt, their length K padded with zeros to a
    multiple of 16 (the float32 vector width on AVX-512): the summing loop's leftover
    iterations run scalar, and LeNet-5's 120- and 84-long rows spent longer on their
    last 8 or 4 values than on the rest (fc1's input gradient 70 -> 56 us, fc2's 19 ->
    15 us per batch of 128 on the 2-core Zen 5). Zeros add nothing to the sums."""
    R, K = a.shape
    if K % 16 == 0 or K < 16:
        return np.ascontiguousarray(a)
    out = np.empty((R, K + (-K) % 16), dtype=a.dtype)
    out[:, :K] = a
    out[:, K:] = 0
    return out


def _conv_operands(x, w, b, stride: int, pad: int):
    """A convolution's kernel operands: x padded, w contiguous and the bias (zeros when
    the layer has none); and the ctx conv2d_backward reads."""
    xpad = _padded(x, pad, pad, pad, pad)
    w = np.ascontiguousarray(w)
    bias = np.ascontiguousarray(b) if b is not None else np.zeros(w.shape[0], dtype=x.dtype)
    return xpad, w, bias, (xpad, w, x.shape, stride, pad, b is not None)


def _padded(x, top: int, bottom: int, left: int, right: int):
    """x (C, H, W, N) as a contiguous array with rows of zeros above and below and
    columns of zeros left and right."""
    if not (top or bottom or left or right):
        return np.ascontiguousarray(x)
    C, H, W, N = x.shape
    out = np.zeros((C, H + top + bottom, W + left + right, N), dtype=x.dtype)
    out[:, top:top + H, left:left + W] = x
    return out


def _cache_misses() -> int:
    """Signatures compiled so far (not loaded from the disk cache), over all kernels."""
    return sum(sum(kernel.stats.cache_misses.values()) for kernel in _KERNELS.values())
