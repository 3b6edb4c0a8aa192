"""The batch gather into the batch-innermost layout (base.Backend.to_batch_last)."""

import numpy as np

from .jit import serial


def _batch_last(x, index, out):
    """out[f, n] = x[index[n], f] for x (M, F): the samples ``index`` picks (a training
    batch, gathered without a copy of its own), in the transposed layout. The copy goes
    in blocks of 16 features, so each sample's read is one contiguous run and each feature
    row is written in order. Negative indices count from the end, as in NumPy. Serial: a
    batch is too little copying to share between threads."""
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


batch_last = serial(_batch_last)
