"""3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray,
"Fast Algorithms for Convolutional Neural Networks", 2016): each 2x2 block of outputs
comes from a 4x4 block of inputs in 16 products per channel pair instead of 36.

With x: (C, H, W, N) batch innermost and w: (K, C, 3, 3), per 2x2 output block:

    V[xi, c] = B^T d[c] B     the 4x4 input block d of channel c, transformed
    U[xi, k, c] = G w[k, c] G^T
    M[xi, k] = sum_c U[xi, k, c] * V[xi, c]      16 sums, xi = (u, v) of the 4x4
    y[k] = A^T M[k] A + b[k]                     the 2x2 outputs

Every value of d, V, M and y above is a run of the batch's N values. The 16 sums are
tiles.py's register-blocked tiles (output channels as the tile's rows, input channels as
its terms), and a task keeps one output block's V and M in cache from the input to the
output transform, so nothing but x and y travels through memory.
"""

import numpy as np
from numba import prange

from .jit import inline, parallel, serial
from .tiles import row_block, row_blocks, rows_sum_terms


def transformed_weights(w):
    """U = G w G^T of w (K, C, 3, 3), packed per xi for the tiles: (16, K*C) in w's dtype,
    row xi holding U[xi] (K x C) in tiles.pack_rows's order."""
    packed = np.empty((16, w.shape[0] * w.shape[1]), dtype=w.dtype)
    transform_weights(np.ascontiguousarray(w), packed)
    return packed


def _transform_weights(w, packed):
    """packed[xi, k0*C + c*rows + r] = (G w[k0 + r, c] G^T)[xi], xi = 4u + v, for each row
    block (k0, rows) of the K output channels; the products are taken in float64."""
    K, C = w.shape[0], w.shape[1]
    gw = np.empty((4, 3))
    for b in range(row_blocks(K)):
        k0, rows = row_block(b, K)
        for r in range(rows):
            for c in range(C):
                g = w[k0 + r, c]
                for q in range(3):  # G g: rows g0, (g0 + g1 + g2)/2, (g0 - g1 + g2)/2, g2
                    g0, g1, g2 = float(g[0, q]), float(g[1, q]), float(g[2, q])
                    gw[0, q], gw[1, q] = g0, 0.5 * (g0 + g1 + g2)
                    gw[2, q], gw[3, q] = 0.5 * (g0 - g1 + g2), g2
                for u in range(4):  # (G g) G^T, the same along the row
                    a0, a1, a2 = gw[u, 0], gw[u, 1], gw[u, 2]
                    at = k0 * C + c * rows + r
                    packed[4 * u, at] = a0
                    packed[4 * u + 1, at] = 0.5 * (a0 + a1 + a2)
                    packed[4 * u + 2, at] = 0.5 * (a0 - a1 + a2)
                    packed[4 * u + 3, at] = a2


transform_weights = serial(_transform_weights)


def output_blocks(size: int) -> int:
    """How many 2x2 output blocks cover ``size`` outputs along one side."""
    return (size + 1) // 2


def _runs(a, start, step, nn):
    """Four runs of nn values of a, ``step`` apart from ``start``: V's or M's rows xi to
    xi + 3 (slices, which Numba vectorizes over, where offset arithmetic would not)."""
    return (a[start:start + nn], a[start + step:start + step + nn],
            a[start + 2 * step:start + 2 * step + nn], a[start + 3 * step:start + 3 * step + nn])


runs = inline(_runs)


def _input_rows(top, bottom, sign, n0, nn, V, vbase, xi_stride, c0, r0, r1, c):
    """One row u of V = B^T d B: (B^T d)[u] = top + sign*bottom (rows r0 and r1 of the
    block d of channel c, whose first column is c0), then times B along the row."""
    a0, a1 = top[c, r0, c0, n0:n0 + nn], top[c, r0, c0 + 1, n0:n0 + nn]
    a2, a3 = top[c, r0, c0 + 2, n0:n0 + nn], top[c, r0, c0 + 3, n0:n0 + nn]
    e0, e1 = bottom[c, r1, c0, n0:n0 + nn], bottom[c, r1, c0 + 1, n0:n0 + nn]
    e2, e3 = bottom[c, r1, c0 + 2, n0:n0 + nn], bottom[c, r1, c0 + 3, n0:n0 + nn]
    v0, v1, v2, v3 = runs(V, vbase, xi_stride, nn)
    for m in range(nn):
        t0, t1 = a0[m] + sign * e0[m], a1[m] + sign * e1[m]
        t2, t3 = a2[m] + sign * e2[m], a3[m] + sign * e3[m]
        v0[m] = t0 - t2
        v1[m] = t1 + t2
        v2[m] = t2 - t1
        v3[m] = t1 - t3


input_rows = inline(_input_rows)


def _input_transform(xpad, c, r0, c0, n0, nn, V, vbase, xi_stride):
    """V[xi*xi_stride + vbase + m] = (B^T d B)[xi], xi = 4u + v, for the 4x4 input block
    d of channel c whose top-left is (r0, c0), over images n0 + m, m < nn. Row by row
    of B^T d (d0 - d2, d1 + d2, d2 - d1, d1 - d3): few enough arrays per loop for LLVM to
    vectorize it."""
    one = xpad.dtype.type(1)
    input_rows(xpad, xpad, -one, n0, nn, V, vbase, xi_stride, c0, r0, r0 + 2, c)
    input_rows(xpad, xpad, one, n0, nn, V, vbase + 4 * xi_stride, xi_stride, c0, r0 + 1,
               r0 + 2, c)
    input_rows(xpad, xpad, -one, n0, nn, V, vbase + 8 * xi_stride, xi_stride, c0, r0 + 2,
               r0 + 1, c)
    input_rows(xpad, xpad, -one, n0, nn, V, vbase + 12 * xi_stride, xi_stride, c0, r0 + 1,
               r0 + 3, c)


def _output_transform(M, mbase, xi_stride, nn, bias, y, k, i0, j0, n0):
    """y[k, i0 + i, j0 + j, n0 + m] = (A^T M A)[i, j] + bias for the 2x2 block at (i0, j0),
    from M[xi*xi_stride + mbase + m] (xi = 4u + v); rows and columns past y's are not
    written."""
    m0, m1, m2, m3 = runs(M, mbase, xi_stride, nn)
    m4, m5, m6, m7 = runs(M, mbase + 4 * xi_stride, xi_stride, nn)
    m8, m9, m10, m11 = runs(M, mbase + 8 * xi_stride, xi_stride, nn)
    m12, m13, m14, m15 = runs(M, mbase + 12 * xi_stride, xi_stride, nn)
    OH, OW = y.shape[1], y.shape[2]
    two_rows, two_cols = i0 + 1 < OH, j0 + 1 < OW
    y00 = y[k, i0, j0, n0:n0 + nn]
    y01 = y[k, i0, min(j0 + 1, OW - 1), n0:n0 + nn]
    y10 = y[k, min(i0 + 1, OH - 1), j0, n0:n0 + nn]
    y11 = y[k, min(i0 + 1, OH - 1), min(j0 + 1, OW - 1), n0:n0 + nn]
    if two_rows and two_cols:
        for m in range(nn):
            # M A: s_u0 = M_u0 + M_u1 + M_u2, s_u1 = M_u1 - M_u2 - M_u3; then A^T (M A)
            s00, s01 = m0[m] + m1[m] + m2[m], m1[m] - m2[m] - m3[m]
            s10, s11 = m4[m] + m5[m] + m6[m], m5[m] - m6[m] - m7[m]
            s20, s21 = m8[m] + m9[m] + m10[m], m9[m] - m10[m] - m11[m]
            s30, s31 = m12[m] + m13[m] + m14[m], m13[m] - m14[m] - m15[m]
            y00[m] = s00 + s10 + s20 + bias
            y01[m] = s01 + s11 + s21 + bias
            y10[m] = s10 - s20 - s30 + bias
            y11[m] = s11 - s21 - s31 + bias
        return
    # a block on the last odd row or column: only its first row and / or column exist
    for m in range(nn):
        s00, s01 = m0[m] + m1[m] + m2[m], m1[m] - m2[m] - m3[m]
        s10, s11 = m4[m] + m5[m] + m6[m], m5[m] - m6[m] - m7[m]
        s20, s21 = m8[m] + m9[m] + m10[m], m9[m] - m10[m] - m11[m]
        s30, s31 = m12[m] + m13[m] + m14[m], m13[m] - m14[m] - m15[m]
        y00[m] = s00 + s10 + s20 + bias
        if two_cols:
            y01[m] = s01 + s11 + s21 + bias
        if two_rows:
            y10[m] = s10 - s20 - s30 + bias


input_transform = inline(_input_transform)
output_transform = inline(_output_transform)


def _winograd_forward(xpad, packed, b, seg, workers, y):
    """y (K, OH, OW, N) = the stride-1 3x3 convolution of xpad (C, HP, WP, N) with the
    weights whose transform is ``packed`` (transformed_weights), plus b. xpad holds every
    input the 2x2 blocks read: HP >= 2*ceil(OH/2) + 2, WP >= 2*ceil(OW/2) + 2.

    One task per (2x2 output block, run of ``seg`` images): the block's V (16 x C x seg)
    and, per block of up to four output channels, its M (16 x 4 x seg) stay in cache
    between the transforms and the tiles' sums.
    """
    K, OH, OW, N = y.shape
    C = xpad.shape[0]
    TH, TW = (OH + 1) // 2, (OW + 1) // 2
    batches = (N + seg - 1) // seg
    tasks = TH * TW * batches
    zeros = np.zeros(4, dtype=y.dtype)
    blocks = row_blocks(K)
    # a worker per thread, each with its own scratch: V and M are too large to take
    # fresh per task (fresh pages fault in every task)
    workers = min(workers, tasks)
    for worker in prange(workers):
        V = np.empty(16 * (C * seg + 16), dtype=y.dtype)
        M = np.empty(16 * (4 * seg + 16), dtype=y.dtype)
        for task in range(worker, tasks, workers):
            block = task // batches
            n0 = (task % batches) * seg
            nn = min(seg, N - n0)
            i0, j0 = (block // TW) * 2, (block % TW) * 2
            # V[xi] and M[xi] 64 bytes more than their runs apart: not 4 KB multiples
            vs, ms = C * nn + 16, 4 * nn + 16
            off = np.arange(C) * nn  # term c of a sum: channel c's run of V[xi]
            for c in range(C):
                input_transform(xpad, c, i0, j0, n0, nn, V, c * nn, vs)
            for kb in range(blocks):
                k0, rows = row_block(kb, K)
                for xi in range(16):
                    # all C terms in one pass (V[xi] is in L1), without rows_multiply_set's
                    # chunk loop, whose per-call cost is large against these short sums
                    rows_sum_terms(M, xi * ms, nn, rows, nn, V, xi * vs, off,
                                   packed[xi, k0 * C:(k0 + rows) * C], zeros, False)
                for r in range(rows):  # while this block's M is in L1
                    output_transform(M, r * nn, ms, nn, b[k0 + r], y, k0 + r, i0, j0, n0)


winograd_forward = parallel(_winograd_forward)


# Where the transforms cost less than the products they save (docs/performance.md, Numba
# backend, Winograd): per 2x2 block the transforms go as C + K values and the sums as
# C x K, so C*K/(C + K) must reach this; and the blocks must not overhang the output by
# much (7x7 outputs take 8x8, 31% more products)
MIN_CHANNEL_RATIO = 10
MAX_OVERHANG = 1.15
# a task's V and M in at most this many values (512 KB of float32, a common core's L2)
SCRATCH_VALUES = 1 << 17
# the longest run of images a task takes
SEGMENT = 128


def applies(w, stride: int, out_height: int, out_width: int) -> bool:
    """Whether a convolution with weights w (K, C, KH, KW) and an out_height x out_width
    output runs here: 3x3, stride 1, with channels and an output size it wins on."""
    K, C = w.shape[0], w.shape[1]
    if stride != 1 or w.shape[2:] != (3, 3) or C * K < MIN_CHANNEL_RATIO * (C + K):
        return False
    covered = 4 * output_blocks(out_height) * output_blocks(out_width)
    return covered <= MAX_OVERHANG * out_height * out_width


def padded_size(out_size: int) -> int:
    """The padded input's rows (columns) the 2x2 blocks of ``out_size`` outputs read."""
    return 2 * output_blocks(out_size) + 2


def conv2d(xpad, w, b, y, threads: int):
    """y = the stride-1 3x3 convolution of xpad with w, plus b (_winograd_forward's
    shapes; xpad holds padded_size(OH) x padded_size(OW) inputs at least). Images go in
    runs of up to SEGMENT (fewer where a task's V and M would outgrow L2, or where there
    would be too few tasks for the threads)."""
    K, C = w.shape[0], w.shape[1]
    OH, OW, N = y.shape[1], y.shape[2], y.shape[3]
    if y.size == 0:
        return
    seg = min(N, SEGMENT, max(8, SCRATCH_VALUES // (16 * (C + 4)) // 8 * 8))
    blocks = output_blocks(OH) * output_blocks(OW)
    while seg > 32 and blocks * -(-N // seg) < 4 * threads:
        seg = max(32, seg // 2 // 8 * 8)
    winograd_forward(xpad, transformed_weights(w), b, seg, threads, y)
