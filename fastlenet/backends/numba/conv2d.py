"""Convolution kernels: forward, the fused conv + ReLU + max-pool block, and the input
and weight gradients (kernels/conv2d.cu holds the CUDA versions).

The stride-1 kernels run along whole output rows: with the batch innermost, one output
row's (j, n) values and the inputs each kernel tap needs are contiguous runs. Strided
convolutions (no zoo model has one) take the plain ``*_strided`` loops.
"""

import numpy as np
from numba import prange

from .jit import parallel, serial
from .pool import pool_window, pool_window_2x2
from .tiles import fill_rows, pack_rows, row_block, row_blocks, rows_multiply_set


# The row steps below (the convolutions' first inner step, now used by the linear
# layers' gradients and the augmentation's separable filter; the convolutions' sums take
# tiles.py's register-blocked tiles) work on two output rows at a time, so every input
# value loaded feeds two sums; four at a time leave too few registers for the loads
# (docs/performance.md, Numba backend). The weight gradient sums two output channels'
# weight blocks at once for the same reason.

def _row_multiply_add(out, src, base, step, wrow):
    """out[m] += sum_q wrow[q] * src[base + q*step + m] for every m < len(out).

    A stride-1 convolution's step: for one input row and one kernel row, the
    output row's (j, n) values and the inputs they need are contiguous runs, so the
    row is updated by whole-run multiply-adds (``step`` = N apart, one kernel column q to
    the next), five kernel columns q at a time: the five weights sit in registers and
    each pass reads ``out`` once for five products (a window sum per output value reloads
    its weights for every vector of images). Slices rather than offset arithmetic inside
    the loop let Numba see the indices are in range, so it vectorizes.
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
    while q + 3 <= KW:
        w0, w1, w2 = wrow[q], wrow[q + 1], wrow[q + 2]
        x0 = src[base + q * step:base + q * step + run]
        x1 = src[base + (q + 1) * step:base + (q + 1) * step + run]
        x2 = src[base + (q + 2) * step:base + (q + 2) * step + run]
        for m in range(run):
            out[m] += w0 * x0[m] + w1 * x1[m] + w2 * x2[m]
        q += 3
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
    while q + 3 <= KW:
        a0, a1, a2 = wrow0[q], wrow0[q + 1], wrow0[q + 2]
        b0, b1, b2 = wrow1[q], wrow1[q + 1], wrow1[q + 2]
        x0 = src[base + q * step:base + q * step + run]
        x1 = src[base + (q + 1) * step:base + (q + 1) * step + run]
        x2 = src[base + (q + 2) * step:base + (q + 2) * step + run]
        for m in range(run):
            v0, v1, v2 = x0[m], x1[m], x2[m]
            out0[m] += a0 * v0 + a1 * v1 + a2 * v2
            out1[m] += b0 * v0 + b1 * v1 + b2 * v2
        q += 3
    while q < KW:
        a0, b0 = wrow0[q], wrow1[q]
        x0 = src[base + q * step:base + q * step + run]
        for m in range(run):
            out0[m] += a0 * x0[m]
            out1[m] += b0 * x0[m]
        q += 1


row_multiply_add = serial(_row_multiply_add)
row_multiply_add2 = serial(_row_multiply_add2)


def _forward_taps(w, HP, WP, N):
    """The forward's terms t = (c, p, q), c-major: each one's offset into the flattened
    padded input (C, HP, WP, N) from its output row's start, and w (K, C, KH, KW) packed
    for the tiles (tiles.pack_rows)."""
    K, C, KH, KW = w.shape
    T = C * KH * KW
    off = np.empty(T, dtype=np.intp)
    for c in range(C):
        for p in range(KH):
            for q in range(KW):
                off[(c * KH + p) * KW + q] = ((c * HP + p) * WP + q) * N
    packed = np.empty(K * T, dtype=w.dtype)
    pack_rows(w.reshape(K, T), packed)
    return off, packed


def _conv_rows(out, obase, ostride, rows, run, xf, xbase, off, packed, b, k0):
    """out[obase + r*ostride + m] for r < rows, m < run: the first ``run`` values of the
    output row of channel k0 + r whose inputs start at xf[xbase] (b plus the sum over
    every term), on the register tiles."""
    T = off.shape[0]
    rows_multiply_set(out, obase, ostride, rows, run, xf, xbase, off,
                      packed[k0 * T:(k0 + rows) * T], b[k0:k0 + rows])


forward_taps = serial(_forward_taps)
conv_rows = serial(_conv_rows)


def _conv2d_forward(xpad, w, b, y):
    """Stride 1: y[k, i, j, n] = b[k] + sum_{c,p,q} w[k, c, p, q] * xpad[c, i + p, j + q, n].

    xpad (C, HP, WP, N) already padded; w (K, C, KH, KW) contiguous; b (K,); y (K, OH, OW, N).
    Output row i's (j, n) values and each term's inputs are contiguous runs of OW*N (the
    batch is innermost), so a row is a sum of shifted input runs: one task per output row
    i of a block of up to four output channels, taken i-major so consecutive tasks read
    the same input rows while they are in cache.
    """
    K, OH, OW, N = y.shape
    C, HP, WP = xpad.shape[0], xpad.shape[1], xpad.shape[2]
    run = OW * N
    xf = xpad.reshape(C * HP * WP * N)
    yf = y.reshape(K * OH * run)
    off, packed = forward_taps(w, HP, WP, N)
    blocks = row_blocks(K)
    for task in prange(OH * blocks):
        i = task // blocks
        k0, rows = row_block(task % blocks, K)
        conv_rows(yf, (k0 * OH + i) * run, OH * run, rows, run, xf, i * WP * N, off, packed,
                  b, k0)


def _conv2d_relu_maxpool2d_forward(xpad, w, b, size, y, arg):
    """y = maxpool(relu(conv(xpad) + b)) for a stride-1 convolution and non-overlapping
    size x size windows (pool stride = size), without storing the convolution's output.

    xpad (C, HP, WP, N) already padded; w (K, C, KH, KW) contiguous; y, arg (K, PH, PW, N)
    as _maxpool2d_forward's with ``relu``. One task per pooled row of a block of up to four
    output channels: it computes the ``size`` convolution rows under it as _conv2d_forward
    does, into a scratch block that stays in cache, and pools them there. Rows and columns
    no window covers are not computed.
    """
    K, PH, PW, N = y.shape
    C, HP, WP = xpad.shape[0], xpad.shape[1], xpad.shape[2]
    cols = PW * size * N  # the part of a convolution output row the windows cover
    xf = xpad.reshape(C * HP * WP * N)
    off, packed = forward_taps(w, HP, WP, N)
    blocks = row_blocks(K)
    for task in prange(PH * blocks):
        i2 = task // blocks
        k0, rows = row_block(task % blocks, K)
        # conv[r * size + s]: convolution row i2*size + s of channel k0 + r
        conv = np.empty((4 * size, cols), dtype=y.dtype)
        flat = conv.reshape(4 * size * cols)
        for s in range(size):
            conv_rows(flat, s * cols, size * cols, rows, cols, xf, (i2 * size + s) * WP * N,
                      off, packed, b, k0)
        for r in range(rows):
            for j2 in range(PW):
                yrow = y[k0 + r, i2, j2]
                arow = arg[k0 + r, i2, j2]
                if size == 2:
                    pool_window_2x2(conv[2 * r], conv[2 * r + 1], j2 * 2 * N, N, yrow, arow)
                else:
                    pool_window(conv[r * size:(r + 1) * size], j2 * size * N, N, yrow, arow,
                                True)


def _conv2d_backward_input(dy_wide, w_flipped, top, left, dx):
    """Stride 1: dx[c, r, s, n] = dxpad[c, top + r, left + s, n], the window of rows and
    columns of the padded input's gradient the caller needs (the padding's own are never
    computed), where dxpad[c, h, x, n] = sum_{k,p,q} w[k, c, p, q] * dy[k, h - p, x - q, n].

    dy_wide (K, OH, OW + 2*(KW-1), N) is dy with KW-1 columns of zeros each side and
    w_flipped (K, C, KH, KW) the weights with q reversed, so with q' = KW-1-q the sum
    over q is dxpad[c, h, x] += sum_q' w_flipped[k, c, p, q'] dy_wide[k, h - p, x + q']:
    the forward's sum of shifted runs, over terms (p, k, q') taken p-major so that the
    kernel rows p whose output row h - p exists are one range of them. One task per row
    r of a block of up to four input channels. dx (C, R, S, N) must lie within the padded
    input (top + R <= OH + KH - 1, left + S <= OW + KW - 1).
    """
    K, OH, WW, N = dy_wide.shape
    C, R, S = dx.shape[0], dx.shape[1], dx.shape[2]
    KH, KW = w_flipped.shape[2], w_flipped.shape[3]
    run = S * N
    dyf = dy_wide.reshape(K * OH * WW * N)
    dxf = dx.reshape(C * R * run)
    T = KH * K * KW
    off = np.empty(T, dtype=np.intp)
    terms = np.empty((C, T), dtype=dx.dtype)
    for p in range(KH):
        for k in range(K):
            for q in range(KW):
                t = (p * K + k) * KW + q
                off[t] = ((k * OH - p) * WW + q) * N  # from row h's start: dy row h - p
                for c in range(C):
                    terms[c, t] = w_flipped[k, c, p, q]
    packed = np.empty(C * T, dtype=dx.dtype)
    pack_rows(terms, packed)
    zeros = np.zeros(4, dtype=dx.dtype)
    blocks = row_blocks(C)
    for task in prange(blocks * R):
        c0, rows = row_block(task // R, C)
        r = task % R
        h = top + r
        t0, t1 = max(0, h - OH + 1) * K * KW, min(KH, h + 1) * K * KW
        if t0 < t1:
            rows_multiply_set(dxf, (c0 * R + r) * run, R * run, rows, run, dyf,
                              (h * WW + left) * N, off[t0:t1],
                              packed[c0 * T + t0 * rows:c0 * T + t1 * rows], zeros)
        else:
            fill_rows(dxf, (c0 * R + r) * run, R * run, rows, run, zeros)


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



def _conv2d_backward_weight(xpad, dy, dw, db):
    """Stride 1: dw[k, c, p, q] = sum_{i,j,n} dy[k, i, j, n] * xpad[c, i + p, j + q, n];
    db[k] = sum dy[k] (db has length 0 when the layer has no bias).

    One task per (pair of output channels k, k + 1; input channel c; kernel row p): each
    owns two rows of KW weights of dw, so the sum over the batch needs neither partial
    buffers nor atomics, and a layer with few channels still has a task per thread. With
    stride 1, for fixed
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
        while both and q + 3 <= KW:  # three columns (3x3 kernels): six sums
            a0 = a1 = a2 = b0 = b1 = b2 = zero
            for i in range(OH):
                top = (k * OH + i) * run
                d0, d1 = dyf[top:top + run], dyf[top + OH * run:top + (OH + 1) * run]
                start = (c * HP + i + p) * WP * N + q * N
                x0, x1 = xf[start:start + run], xf[start + N:start + N + run]
                x2 = xf[start + 2 * N:start + 2 * N + run]
                for m in range(run):
                    e0, e1, v0, v1, v2 = d0[m], d1[m], x0[m], x1[m], x2[m]
                    a0, a1, a2 = a0 + e0 * v0, a1 + e0 * v1, a2 + e0 * v2
                    b0, b1, b2 = b0 + e1 * v0, b1 + e1 * v1, b2 + e1 * v2
            dw[k, c, p, q], dw[k, c, p, q + 1], dw[k, c, p, q + 2] = a0, a1, a2
            dw[k + 1, c, p, q], dw[k + 1, c, p, q + 1], dw[k + 1, c, p, q + 2] = b0, b1, b2
            q += 3
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


def _conv2d_backward_weight_strided(xpad, dy, stride, dw, db):
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


conv2d_forward = parallel(_conv2d_forward)
conv2d_forward_strided = parallel(_conv2d_forward_strided)
conv2d_relu_maxpool2d_forward = parallel(_conv2d_relu_maxpool2d_forward)
conv2d_backward_input = parallel(_conv2d_backward_input)
conv2d_backward_weight = parallel(_conv2d_backward_weight)
conv2d_backward_weight_strided = parallel(_conv2d_backward_weight_strided)
