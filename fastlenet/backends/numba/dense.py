"""The linear layers' matrix products and bias gradients (kernels/dense.cu holds the
CUDA versions). Kernels of this backend's own rather than BLAS: BLAS's threads and
Numba's would spin against each other on the same cores (docs/performance.md).

The forward's product (gemm_nt: dot products along the layer's input, hundreds of values
long) comes in two register blockings, 4 x 4 and 3 x 3 outputs per task: which one is
faster depends on how many vector registers the CPU has, so fastlenet.tuning measures
both on first use and keeps the faster (docs/tuning.md). The gradients' products sum over
the batch or the layer's outputs, too few values for dot products to pay their final
reductions, so they update whole output rows instead (gemm_rows).
"""

import numpy as np
from numba import prange

from .conv2d import row_multiply_add, row_multiply_add2
from .jit import parallel, serial


def _gemm_nt(a, b, bias, out, size):
    """out[r, s] = bias[r] + sum_k a[r, k] * b[s, k] for k < L: A @ B.T with both
    operands' rows contiguous along the summed axis, one task per ``size`` x ``size``
    block of out (4 or 3: the register blockings below)."""
    R, S = a.shape[0], b.shape[0]
    blocks = (S + size - 1) // size
    for task in prange(((R + size - 1) // size) * blocks):
        r0 = (task // blocks) * size
        s0 = (task % blocks) * size
        if size == 4:
            block_4x4(a, b, bias, out, r0, s0)
        else:
            block_3x3(a, b, bias, out, r0, s0)


def _block_4x4(a, b, bias, out, r0, s0):
    """The 4 x 4 block of out at (r0, s0): its 16 sums are dot products that share every
    load (4 rows of a, 4 of b: 8 loads for 16 multiply-adds), which LLVM vectorizes along
    k; 16 vector accumulators and 8 operands want 32 vector registers (AVX-512). A block
    cut by the edge of out repeats its last row or column, so every output is summed by
    the same code, in the same order."""
    R, L = a.shape
    S = b.shape[0]
    zero = out.dtype.type(0)
    r1, r2, r3 = min(r0 + 1, R - 1), min(r0 + 2, R - 1), min(r0 + 3, R - 1)
    s1, s2, s3 = min(s0 + 1, S - 1), min(s0 + 2, S - 1), min(s0 + 3, S - 1)
    a0, a1, a2, a3 = a[r0], a[r1], a[r2], a[r3]
    b0, b1, b2, b3 = b[s0], b[s1], b[s2], b[s3]
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
    d0, d1, d2, d3 = bias[r0], bias[r1], bias[r2], bias[r3]
    out[r0, s0], out[r0, s1], out[r0, s2], out[r0, s3] = c00 + d0, c01 + d0, c02 + d0, c03 + d0
    out[r1, s0], out[r1, s1], out[r1, s2], out[r1, s3] = c10 + d1, c11 + d1, c12 + d1, c13 + d1
    out[r2, s0], out[r2, s1], out[r2, s2], out[r2, s3] = c20 + d2, c21 + d2, c22 + d2, c23 + d2
    out[r3, s0], out[r3, s1], out[r3, s2], out[r3, s3] = c30 + d3, c31 + d3, c32 + d3, c33 + d3


def _block_3x3(a, b, bias, out, r0, s0):
    """_block_4x4's sums for a 3 x 3 block: 9 vector accumulators and 6 operands fit the
    16 vector registers of AVX2, where 4 x 4 blocks spill to the stack."""
    R, L = a.shape
    S = b.shape[0]
    zero = out.dtype.type(0)
    r1, r2 = min(r0 + 1, R - 1), min(r0 + 2, R - 1)
    s1, s2 = min(s0 + 1, S - 1), min(s0 + 2, S - 1)
    a0, a1, a2 = a[r0], a[r1], a[r2]
    b0, b1, b2 = b[s0], b[s1], b[s2]
    c00 = c01 = c02 = c10 = c11 = c12 = c20 = c21 = c22 = zero
    for k in range(L):
        x0, x1, x2 = a0[k], a1[k], a2[k]
        y0, y1, y2 = b0[k], b1[k], b2[k]
        c00 += x0 * y0
        c01 += x0 * y1
        c02 += x0 * y2
        c10 += x1 * y0
        c11 += x1 * y1
        c12 += x1 * y2
        c20 += x2 * y0
        c21 += x2 * y1
        c22 += x2 * y2
    d0, d1, d2 = bias[r0], bias[r1], bias[r2]
    out[r0, s0], out[r0, s1], out[r0, s2] = c00 + d0, c01 + d0, c02 + d0
    out[r1, s0], out[r1, s1], out[r1, s2] = c10 + d1, c11 + d1, c12 + d1
    out[r2, s0], out[r2, s1], out[r2, s2] = c20 + d2, c21 + d2, c22 + d2


def _gemm_rows(a, b, out):
    """out = a @ b for a (R, L) (any strides), b (L, S) C-contiguous, out (R, S): one task
    per two rows of out, which take the convolutions' row step over b's rows, five rows
    of b per pass (conv2d.row_multiply_add2), so each load of b feeds two sums."""
    R, L = a.shape
    S = b.shape[1]
    bf = b.reshape(L * S)
    zero = out.dtype.type(0)
    for task in prange((R + 1) // 2):
        r = task * 2
        out0 = out[r]
        for m in range(S):
            out0[m] = zero
        if r + 1 < R:
            out1 = out[r + 1]
            for m in range(S):
                out1[m] = zero
            row_multiply_add2(out0, out1, bf, 0, S, a[r], a[r + 1])
        else:
            row_multiply_add(out0, bf, 0, S, a[r])


def _row_sum(a, out):
    """out[r] = sum_k a[r, k]: a bias gradient."""
    for r in range(a.shape[0]):
        acc = out.dtype.type(0)
        for k in range(a.shape[1]):
            acc += a[r, k]
        out[r] = acc


block_4x4 = serial(_block_4x4)
block_3x3 = serial(_block_3x3)
gemm_nt = parallel(_gemm_nt)
gemm_rows = parallel(_gemm_rows)
row_sum = serial(_row_sum)

# the register blockings of gemm_nt (its ``size``), by the name fastlenet.tuning records
BLOCKINGS = {"4x4": 4, "3x3": 3}


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
