"""Uniform and standard normal numbers from Philox4x32-10: the numbers kernels/random.cu
draws on the GPU, here in parallel on the CPU, so the numba and cupy backends draw the
same dropout masks and augmentations from the same seed (backends/philox.py).

Element i of a draw is Philox(key, counter + i). float32 uniforms take the top 24 bits of
word 0, float64 ones 53 bits of words 0 and 1; normals are Box-Muller on the element's
own block (words 0 and 1 for float32, 0-1 and 2-3 for float64), u1 in (0, 1] so that
log(u1) is finite. The 32-bit words are held in uint64 values and masked, so the
32 x 32 -> 64-bit products vectorize (AVX2's vpmuludq).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .. import philox
from .jit import parallel, serial

UNIFORM_F32, UNIFORM_F64, NORMAL_F32, NORMAL_F64 = range(4)
BLOCK = 4096  # numbers per parallel task

_LOW = np.uint64(0xFFFFFFFF)
_S5, _S6, _S8, _S26, _S32 = (np.uint64(s) for s in (5, 6, 8, 26, 32))
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_F24_32 = np.float32(1.0 / 16777216.0)
_F27 = 1.0 / 134217728.0
_F53 = 1.0 / 9007199254740992.0


def _philox(k0, k1, c0, c1):
    """The four words of Philox4x32-10 at counter (c0, c1, 0, 0) under key (k0, k1)."""
    c2 = np.uint64(0)
    c3 = np.uint64(0)
    for _ in range(10):
        p0 = _M0 * c0
        p1 = _M1 * c2
        n0 = (p1 >> _S32) ^ c1 ^ k0
        n2 = (p0 >> _S32) ^ c3 ^ k1
        c1 = p1 & _LOW
        c3 = p0 & _LOW
        c0 = n0
        c2 = n2
        k0 = (k0 + _W0) & _LOW
        k1 = (k1 + _W1) & _LOW
    return c0, c1, c2, c3


def _fill(out, u2, key, counter, kind):
    """Number i of a draw of ``kind`` from (key, counter) into out[i], BLOCK numbers per
    task; for normals, the Box-Muller uniforms u1 into out and u2 into u2. The loops sit in
    this parallel function itself: the same loop in a serial function (called per block)
    did not vectorize and ran 7x slower. Only the float32 uniforms (dropout's) vectorize:
    LLVM leaves a loop that reads two Philox words scalar (Zen 3: 0.28 ms per 204,800
    float32 uniforms on 2 threads, 1.8 ms for float64 ones; NumPy's PCG64 0.45-0.9 ms)."""
    n = out.shape[0]
    k0, k1 = key & _LOW, key >> _S32
    tasks = (n + BLOCK - 1) // BLOCK
    if kind == UNIFORM_F32:
        for task in prange(tasks):
            for i in range(task * BLOCK, min(n, (task + 1) * BLOCK)):
                position = counter + np.uint64(i)
                w0, w1, w2, w3 = philox_words(k0, k1, position & _LOW, position >> _S32)
                out[i] = np.float32(np.int32(w0 >> _S8)) * _F24_32
    elif kind == NORMAL_F32:
        for task in prange(tasks):
            for i in range(task * BLOCK, min(n, (task + 1) * BLOCK)):
                position = counter + np.uint64(i)
                w0, w1, w2, w3 = philox_words(k0, k1, position & _LOW, position >> _S32)
                out[i] = np.float32(np.int32((w0 >> _S8) + np.uint64(1))) * _F24_32
                u2[i] = np.float32(np.int32(w1 >> _S8)) * _F24_32
    elif kind == UNIFORM_F64:
        for task in prange(tasks):
            for i in range(task * BLOCK, min(n, (task + 1) * BLOCK)):
                position = counter + np.uint64(i)
                w0, w1, w2, w3 = philox_words(k0, k1, position & _LOW, position >> _S32)
                # ((w0 >> 5) * 2^26 + (w1 >> 6)) / 2^53, exactly
                out[i] = (np.float64(np.int32(w0 >> _S5)) * _F27
                          + np.float64(np.int32(w1 >> _S6)) * _F53)
    else:
        for task in prange(tasks):
            for i in range(task * BLOCK, min(n, (task + 1) * BLOCK)):
                position = counter + np.uint64(i)
                w0, w1, w2, w3 = philox_words(k0, k1, position & _LOW, position >> _S32)
                out[i] = (np.float64(np.int32(w0 >> _S5)) * _F27
                          + np.float64(np.int32(w1 >> _S6)) * _F53 + _F53)  # (0, 1]
                u2[i] = (np.float64(np.int32(w2 >> _S5)) * _F27
                         + np.float64(np.int32(w3 >> _S6)) * _F53)


philox_words = serial(_philox)
fill = parallel(_fill)


class PhiloxGenerator:
    """The numba backend's generator (``NumbaBackend.default_rng``): NumPy arrays of the
    numbers the cupy backend's generator of the same seed and state draws.

    State: ``key`` (from the seed) and ``counter`` (numbers drawn so far), plain ints;
    ``random`` and ``standard_normal`` take a shape and float32 or float64, as
    numpy.random.Generator's do.
    """

    def __init__(self, seed: int):
        self.key = philox.seed_key(seed)
        self.counter = 0

    def random(self, shape, dtype=np.float64):
        """Uniform numbers in [0, 1), a new array of ``shape`` and ``dtype``."""
        return self._draw(shape, dtype, UNIFORM_F32, UNIFORM_F64)

    def standard_normal(self, shape, dtype=np.float64):
        """Standard normal numbers, a new array of ``shape`` and ``dtype``:
        sqrt(-2 log u1) cos(2 pi u2) with NumPy's vectorized log and cos (equal to the
        GPU's to within rounding; Numba's calls to libm ran one number at a time)."""
        u1, u2 = self._draw(shape, dtype, NORMAL_F32, NORMAL_F64)
        t = u1.dtype.type
        np.log(u1, out=u1)
        u1 *= t(-2.0)
        np.sqrt(u1, out=u1)
        u2 *= t(6.2831853071795865)
        np.cos(u2, out=u2)
        u1 *= u2
        return u1

    def _draw(self, shape, dtype, f32, f64):
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"the generator draws float32 or float64 numbers, not {dtype}")
        out = np.empty(shape, dtype=dtype)
        normal = f32 == NORMAL_F32
        u2 = np.empty(shape if normal else 0, dtype=dtype)
        kind = f32 if dtype == np.float32 else f64
        fill(out.reshape(-1), u2.reshape(-1), np.uint64(self.key), np.uint64(self.counter), kind)
        self.counter = (self.counter + out.size) % 2 ** 64
        return (out, u2) if normal else out
