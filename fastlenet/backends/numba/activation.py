"""Element-wise kernels: tanh forward and backward, and dropout's mask applied.

Parallel over blocks of the flattened array; arrays of one block or two run on the
calling thread (waking the pool costs more than they take). Without Intel's SVML, Numba
calls libm's tanh one value at a time (several times slower than NumPy's); float32
therefore takes a rational approximation that vectorizes (Eigen's
``generic_fast_tanh_float``: odd degree 13 over even degree 6 on [-7.9, 7.9], a few
float32 rounding errors from tanh, the input itself below 4e-4), float64 keeps libm's tanh.
"""

import numpy as np
from numba import prange

from .jit import parallel, serial

BLOCK = 16384  # values per task: enough to outweigh a task's start, few tasks per thread


def _tanh_f32(x, y):
    """y = tanh(x) for float32 x, y of one size (flattened, contiguous)."""
    n = x.shape[0]
    f = np.float32
    for block in prange((n + BLOCK - 1) // BLOCK):
        for i in range(block * BLOCK, min(n, (block + 1) * BLOCK)):
            v = x[i]
            c = min(max(v, f(-7.90531110763549805)), f(7.90531110763549805))
            c2 = c * c
            p = f(-2.76076847742355e-16) * c2 + f(2.00018790482477e-13)
            p = p * c2 + f(-8.60467152213735e-11)
            p = p * c2 + f(5.12229709037114e-08)
            p = p * c2 + f(1.48572235717979e-05)
            p = p * c2 + f(6.37261928875436e-04)
            p = p * c2 + f(4.89352455891786e-03)
            q = f(1.19825839466702e-06) * c2 + f(1.18534705686654e-04)
            q = q * c2 + f(2.26843463243900e-03)
            q = q * c2 + f(4.89352518554385e-03)
            y[i] = v if abs(v) < f(0.0004) else c * p / q


def _tanh_f64(x, y):
    """y = tanh(x), libm's, for float64 x, y (flattened, contiguous)."""
    n = x.shape[0]
    for block in prange((n + BLOCK - 1) // BLOCK):
        for i in range(block * BLOCK, min(n, (block + 1) * BLOCK)):
            y[i] = np.tanh(x[i])


def _tanh_backward(dy, y, dx):
    """dx = dy * (1 - y^2), y = tanh(x) (flattened, contiguous)."""
    n = dy.shape[0]
    one = dx.dtype.type(1)
    for block in prange((n + BLOCK - 1) // BLOCK):
        for i in range(block * BLOCK, min(n, (block + 1) * BLOCK)):
            dx[i] = dy[i] * (one - y[i] * y[i])


def _dropout(x, u, p, scale, y):
    """y = x * (scale if u >= p else 0): inverted dropout's mask and scale in one pass,
    the same bits as base.Backend.dropout_forward's multiply by its mask (flattened,
    contiguous; p and scale in x's dtype). Also its backward, with dy for x."""
    n = x.shape[0]
    zero = y.dtype.type(0)
    for block in prange((n + BLOCK - 1) // BLOCK):
        for i in range(block * BLOCK, min(n, (block + 1) * BLOCK)):
            y[i] = x[i] * (scale if u[i] >= p else zero)


SERIAL_BELOW = 2 * BLOCK  # values: fewer run on the calling thread
tanh_f32 = parallel(_tanh_f32)
tanh_f64 = parallel(_tanh_f64)
tanh_backward = parallel(_tanh_backward)
tanh_f32_serial = serial(_tanh_f32)
tanh_f64_serial = serial(_tanh_f64)
tanh_backward_serial = serial(_tanh_backward)
dropout = parallel(_dropout)
dropout_serial = serial(_dropout)
