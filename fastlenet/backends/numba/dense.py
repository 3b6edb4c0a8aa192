"""The linear layers' matrix products and bias gradients (kernels/dense.cu holds the
CUDA versions). A kernel of this backend's own rather than BLAS: BLAS's threads and
Numba's would spin against each other on the same cores (docs/performance.md).
"""

import numpy as np
from numba import prange

from .jit import parallel, serial


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


def _row_sum(a, out):
    """out[r] = sum_k a[r, k]: a bias gradient."""
    for r in range(a.shape[0]):
        acc = out.dtype.type(0)
        for k in range(a.shape[1]):
            acc += a[r, k]
        out[r] = acc


gemm_nt = parallel(_gemm_nt)
row_sum = serial(_row_sum)


def padded_rows(a):
    """a (R, K) as contiguous rows for gemm_nt, their length K padded with zeros to a
    multiple of 16 (a float32 AVX-512 vector): the summing loop's leftover iterations run
    scalar, and short rows spend longer on them than on the rest. Zeros add nothing."""
    R, K = a.shape
    if K % 16 == 0 or K < 16:
        return np.ascontiguousarray(a)
    out = np.empty((R, K + (-K) % 16), dtype=a.dtype)
    out[:, :K] = a
    out[:, K:] = 0
    return out
