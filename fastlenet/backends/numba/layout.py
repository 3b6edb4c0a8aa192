"""The batch gather into the batch-innermost layout (base.Backend.to_batch_last)."""

import numpy as np

from .jit import serial


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
