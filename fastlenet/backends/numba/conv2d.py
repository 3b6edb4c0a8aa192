"""Convolution kernels: forward, the fused conv + ReLU + max-pool block, and the input
and weight gradients (kernels/conv2d.cu holds the CUDA versions).

The stride-1 kernels run along whole output rows: with the batch innermost, one output
row's (j, n) values and the inputs each kernel column needs are contiguous runs. Strided
convolutions (no zoo model has one) take the plain ``*_strided`` loops.
"""

import numpy as np
from numba import prange

from .jit import parallel, serial
from .pool import pool_window, pool_window_2x2


# The stride-1 kernels work on two output rows at a time (two output channels in the
# forward, two input channels in the input gradient) or two weight blocks (two output
# channels in the weight gradient), so every input value loaded feeds two sums; four at
# a time leave too few registers for the loads (docs/performance.md, Numba backend).

def _row_multiply_add(out, src, base, step, wrow):
    """out[m] += sum_q wrow[q] * src[base + q*step + m] for every m < len(out).

    The stride-1 convolution's inner step: for one input row and one kernel row, the
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
        conv_row_pair(y0, y1, both, xf, w, b, k, i, HP, WP, N)


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
                row_multiply_add2(y0, y1, xf, (c * HP + i + p) * WP * N, N, w[k, c, p],
                                   w[k + 1, c, p])
    else:
        for c in range(C):
            for p in range(KH):
                row_multiply_add(y0, xf, (c * HP + i + p) * WP * N, N, w[k, c, p])


conv_row_pair = serial(_conv_row_pair)


def _conv2d_relu_maxpool2d_forward(xpad, w, b, size, y, arg):
    """y = maxpool(relu(conv(xpad) + b)) for a stride-1 convolution and non-overlapping
    size x size windows (pool stride = size), without storing the convolution's output.

    xpad (C, HP, WP, N) already padded; w (K, C, KH, KW); y, arg (K, PH, PW, N) as
    _maxpool2d_forward's with ``relu``. One task per pooled row of a pair of output
    channels (the last alone when K is odd): it computes the ``size`` convolution rows
    under it as _conv2d_forward does, into a scratch block that stays in cache, and pools
    them there. Rows and columns no window covers are not computed.
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
            conv_row_pair(rows[r], rows[size + r], both, xf, w, b, k, i2 * size + r, HP, WP, N)
        for kk in range(2 if both else 1):
            for j2 in range(PW):
                yrow = y[k + kk, i2, j2]
                arow = arg[k + kk, i2, j2]
                if size == 2:
                    pool_window_2x2(rows[2 * kk], rows[2 * kk + 1], j2 * 2 * N, N, yrow, arow)
                else:
                    pool_window(rows[kk * size:(kk + 1) * size], j2 * size * N, N, yrow, arow,
                                 True)



def _conv2d_backward_input(dy_wide, w_flipped, top, left, dx):
    """Stride 1: dx[c, r, s, n] = dxpad[c, top + r, left + s, n], the window of rows and
    columns of the padded input's gradient the caller needs (the padding's own are never
    computed), where dxpad[c, h, x, n] = sum_{k,p,q} w[k, c, p, q] * dy[k, h - p, x - q, n].

    dy_wide (K, OH, OW + 2*(KW-1), N) is dy with KW-1 columns of zeros each side and
    w_flipped (K, C, KH, KW) the weights with q reversed, so with q' = KW-1-q the sum
    over q is dxpad[c, h, x] += sum_q' w_flipped[k, c, p, q'] dy_wide[k, h - p, x + q']:
    the forward kernel's row step. One task per row r of a pair of input channels
    (c, c + 1) (the last alone when C is odd), which sums only the kernel rows p whose
    output row top + r - p exists. dx (C, R, S, N) must lie within the padded input
    (top + R <= OH + KH - 1, left + S <= OW + KW - 1).
    """
    K, OH, WW, N = dy_wide.shape
    C, R, S = dx.shape[0], dx.shape[1], dx.shape[2]
    KH = w_flipped.shape[2]
    run = S * N
    dyf = dy_wide.reshape(K * OH * WW * N)
    dxf = dx.reshape(C * R * run)
    pairs = (C + 1) // 2
    for task in prange(pairs * R):
        c = (task // R) * 2
        r = task % R
        h = top + r
        row0 = dxf[(c * R + r) * run:(c * R + r + 1) * run]
        for m in range(run):
            row0[m] = 0
        if c + 1 < C:
            row1 = dxf[((c + 1) * R + r) * run:((c + 1) * R + r + 1) * run]
            for m in range(run):
                row1[m] = 0
            for p in range(KH):
                i = h - p
                if 0 <= i < OH:
                    for k in range(K):
                        row_multiply_add2(row0, row1, dyf, ((k * OH + i) * WW + left) * N, N,
                                           w_flipped[k, c, p], w_flipped[k, c + 1, p])
        else:
            for p in range(KH):
                i = h - p
                if 0 <= i < OH:
                    for k in range(K):
                        row_multiply_add(row0, dyf, ((k * OH + i) * WW + left) * N, N,
                                         w_flipped[k, c, p])


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
