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

BLOCK = 4096  # numbers per parallel task

_LOW = np.uint64(0xFFFFFFFF)
_S5, _S6, _S8, _S32 = np.uint64(5), np.uint64(6), np.uint64(8), np.uint64(32)
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_F24 = np.float32(1.0 / 16777216.0)
_F27, _F53 = 1.0 / 134217728.0, 1.0 / 9007199254740992.0


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


# The loops below sit in the parallel functions themselves, and each reads one Philox
# word: LLVM vectorizes those, but not the same loop in a serial function, nor one that
# reads two words (6x slower). So float64 uniforms and normals draw their words one pass
# each and then combine them (docs/performance.md, Random numbers).

def _uniform_f32(out, key, counter):
    """out[i] = the top 24 bits of word 0 of Philox(key, counter + i), over 2^24."""
    n = out.shape[0]
    k0, k1 = key & _LOW, key >> _S32
    for task in prange((n + BLOCK - 1) // BLOCK):
        for i in range(task * BLOCK, min(n, (task + 1) * BLOCK)):
            position = counter + np.uint64(i)
            w0, w1, w2, w3 = philox_words(k0, k1, position & _LOW, position >> _S32)
            out[i] = np.float32(np.int32(w0 >> _S8)) * _F24


def _words(out, key, counter, which):
    """out[i] = word ``which`` (0-3) of Philox(key, counter + i), for out (n,) uint32."""
    n = out.shape[0]
    k0, k1 = key & _LOW, key >> _S32
    tasks = (n + BLOCK - 1) // BLOCK
    if which == 0:
        for task in prange(tasks):
            for i in range(task * BLOCK, min(n, (task + 1) * BLOCK)):
                position = counter + np.uint64(i)
                out[i] = philox_words(k0, k1, position & _LOW, position >> _S32)[0]
    elif which == 1:
        for task in prange(tasks):
            for i in range(task * BLOCK, min(n, (task + 1) * BLOCK)):
                position = counter + np.uint64(i)
                out[i] = philox_words(k0, k1, position & _LOW, position >> _S32)[1]
    elif which == 2:
        for task in prange(tasks):
            for i in range(task * BLOCK, min(n, (task + 1) * BLOCK)):
                position = counter + np.uint64(i)
                out[i] = philox_words(k0, k1, position & _LOW, position >> _S32)[2]
    else:
        for task in prange(tasks):
            for i in range(task * BLOCK, min(n, (task + 1) * BLOCK)):
                position = counter + np.uint64(i)
                out[i] = philox_words(k0, k1, position & _LOW, position >> _S32)[3]


def _unit_f32(w, plus_one, out):
    """out = ((w >> 8) + plus_one) / 2^24: a float32 uniform in [0, 1), or in (0, 1]."""
    for i in prange(out.shape[0]):
        out[i] = np.float32(np.int32((np.uint64(w[i]) >> _S8) + np.uint64(plus_one))) * _F24


def _unit_f64(hi, lo, plus_one, out):
    """out = ((hi >> 5) 2^26 + (lo >> 6) + plus_one) / 2^53, exactly (random.cu's
    doubles), the 53 bits converted as two int32 parts, which AVX2 converts in vectors."""
    for i in prange(out.shape[0]):
        out[i] = (np.float64(np.int32(np.uint64(hi[i]) >> _S5)) * _F27
                  + np.float64(np.int32((np.uint64(lo[i]) >> _S6) + np.uint64(plus_one))) * _F53)


philox_words = serial(_philox)
uniform_f32 = parallel(_uniform_f32)
words = parallel(_words)
unit_f32 = parallel(_unit_f32)
unit_f64 = parallel(_unit_f64)


class PhiloxGenerator:
    """The numba backend's generator (``NumbaBackend.default_rng``): NumPy arrays of the
    numbers the cupy backend's generator of the same seed and state draws.

    State: ``key`` (from the seed) and ``counter`` (numbers drawn so far), plain ints;
    ``random`` and ``standard_normal`` take a shape and float32 or float64, as
    numpy.random.Generator's do. Speed against NumPy's PCG64: docs/performance.md,
    Random numbers.
    """

    def __init__(self, seed: int):
        self.key = philox.seed_key(seed)
        self.counter = 0

    def random(self, shape, dtype=np.float64):
        """Uniform numbers in [0, 1), a new array of ``shape`` and ``dtype``."""
        out = np.empty(shape, dtype=_float_dtype(dtype))
        if out.dtype == np.float32:
            uniform_f32(out.reshape(-1), np.uint64(self.key), np.uint64(self.counter))
        else:
            unit_f64(*self._words(out.size, 0, 1), 0, out.reshape(-1))
        self._advance(out.size)
        return out

    def standard_normal(self, shape, dtype=np.float64):
        """Standard normal numbers, a new array of ``shape`` and ``dtype``: Box-Muller,
        sqrt(-2 log u1) cos(2 pi u2) with u1 in (0, 1], with NumPy's vectorized log and
        cos (equal to the GPU's to within rounding; libm's, called from Numba, ran one
        number at a time)."""
        u1 = np.empty(shape, dtype=_float_dtype(dtype))
        u2 = np.empty_like(u1)
        t = u1.dtype.type
        if u1.dtype == np.float32:
            w0, w1 = self._words(u1.size, 0, 1)
            unit_f32(w0, 1, u1.reshape(-1))
            unit_f32(w1, 0, u2.reshape(-1))
        else:
            w0, w1, w2, w3 = self._words(u1.size, 0, 1, 2, 3)
            unit_f64(w0, w1, 1, u1.reshape(-1))
            unit_f64(w2, w3, 0, u2.reshape(-1))
        np.log(u1, out=u1)
        u1 *= t(-2.0)
        np.sqrt(u1, out=u1)
        u2 *= t(6.2831853071795865)
        np.cos(u2, out=u2)
        u1 *= u2
        self._advance(u1.size)
        return u1

    def _words(self, count: int, *which):
        """Words ``which`` of the next ``count`` Philox blocks, one uint32 array each."""
        out = []
        for w in which:
            a = np.empty(count, dtype=np.uint32)
            words(a, np.uint64(self.key), np.uint64(self.counter), w)
            out.append(a)
        return out

    def _advance(self, count: int) -> None:
        self.counter = (self.counter + count) % 2 ** 64


def _float_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"the generator draws float32 or float64 numbers, not {dtype}")
    return dtype
