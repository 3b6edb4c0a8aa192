"""The batch gather into the batch-innermost layout (base.Backend.to_batch_last), and
the copies other kernels read: transposes for the linear layers' products, and maps
between margins of zeros for the convolutions."""

import numpy as np
from numba import prange

from .jit import parallel, serial


def _batch_last(x, index, out):
    """out[f, n] = x[index[n], f] for x (M, F): the samples ``index`` picks (a training
    batch, gathered without a copy of its own), in the transposed layout. The copy goes
    through a 16 x 16 tile: 16 samples' runs of 16 features are read whole, and written
    out as 16 feature rows of 16 consecutive samples. Negative indices count from the
    end, as in NumPy. Serial: a batch is too little copying to share between threads."""
    M, F = x.shape
    N = index.shape[0]
    rows = np.empty(N, np.int64)
    for n in range(N):
        r = index[n] + M if index[n] < 0 else index[n]
        if r < 0 or r >= M:
            raise IndexError("to_batch_last: a sample index is out of range")
        rows[n] = r
    tile = np.empty((16, 16), x.dtype)
    for n0 in range(0, N, 16):
        samples = min(16, N - n0)
        for f0 in range(0, F, 16):
            features = min(16, F - f0)
            for a in range(samples):
                xrun = x[rows[n0 + a], f0:f0 + features]
                for f in range(features):
                    tile[f, a] = xrun[f]
            for f in range(features):
                orun = out[f0 + f, n0:n0 + samples]
                trow = tile[f]
                for a in range(samples):
                    orun[a] = trow[a]


batch_last = serial(_batch_last)


def _transposed(a, out):
    """out = a.T for a (R, S) and out (S, R), both C-contiguous, one task per band of 16
    rows of out (16 columns of a): each 16 x 16 tile is read as 16 runs of a's rows and
    written as 16 runs of out's, so both sides move whole cache lines, where NumPy's copy
    of a transposed view writes one strided element at a time. The tile loops are
    batch_last's, inline: shared as a serial helper they ran 1.5x slower."""
    R, S = a.shape
    for band in prange((S + 15) // 16):
        s0 = band * 16
        cols = min(16, S - s0)
        tile = np.empty((16, 16), a.dtype)
        for r0 in range(0, R, 16):
            rows = min(16, R - r0)
            for i in range(rows):
                arun = a[r0 + i, s0:s0 + cols]
                for j in range(cols):
                    tile[j, i] = arun[j]
            for j in range(cols):
                orun = out[s0 + j, r0:r0 + rows]
                trow = tile[j]
                for i in range(rows):
                    orun[i] = trow[i]


transposed = parallel(_transposed)


def _pad_into(x, top, left, out):
    """out (C, HP, WP, N) = x (C, H, W, N) with ``top`` rows and ``left`` columns of zeros
    before it and the rest of out's rows and columns zero after it: the padded input of a
    convolution, or dy between zero margins. One task per row of out, in parallel, where
    NumPy's zeros-then-assign is two serial passes with strided writes."""
    C, H, W, N = x.shape
    HP, WP = out.shape[1], out.shape[2]
    zero = out.dtype.type(0)
    xf = x.reshape(C * H, W * N)
    of = out.reshape(C * HP, WP * N)
    for task in prange(C * HP):
        c = task // HP
        i = task % HP - top
        row = of[task]
        if 0 <= i < H:
            src = xf[c * H + i]
            for m in range(left * N):
                row[m] = zero
            mid = row[left * N:(left + W) * N]
            for m in range(W * N):
                mid[m] = src[m]
            for m in range((left + W) * N, WP * N):
                row[m] = zero
        else:
            for m in range(WP * N):
                row[m] = zero


pad_into = parallel(_pad_into)
