"""How the Numba kernels are compiled: the options, and a list of every kernel.

Every kernel is first a plain Python function (``_conv2d_forward``) and then wrapped
(``conv2d_forward = parallel(_conv2d_forward)``): with ``NUMBA_DISABLE_JIT=1`` the wrapped
names are the plain functions and ``prange`` is ``range``, so a kernel can be stepped
through in a debugger. ``cache=True`` keeps the machine code on disk, so only the first
run pays the compile (reported once by ``NumbaBackend.prepare``).
"""

from __future__ import annotations

import numba

# ``fastmath`` is limited to ``contract`` (fused multiply-add) and ``reassoc`` (lets sums
# vectorize): neither lets a NaN or an infinity vanish, so a diverging run is still
# caught by the trainer's loss check. NumPy's error model: a division by zero gives inf
# or NaN instead of raising, so divisions carry no test-and-branch and loops with one
# vectorize (docs/performance.md, Numba backend).
OPTIONS = dict(cache=True, fastmath={"contract", "reassoc"}, error_model="numpy")

# every compiled function, for counting what the disk cache did not have
COMPILED: list = []


def _register(dispatcher):
    COMPILED.append(dispatcher)
    return dispatcher


def parallel(func):
    """``func`` compiled with its ``prange`` loops spread over Numba's threads."""
    return _register(numba.njit(parallel=True, **OPTIONS)(func))


def serial(func):
    """``func`` compiled to run on the calling thread: kernels of microseconds, less
    than waking the thread pool costs, and helpers the kernels call."""
    return _register(numba.njit(**OPTIONS)(func))


def cache_misses() -> int:
    """Signatures compiled so far (not loaded from the disk cache), over all kernels."""
    return sum(sum(kernel.stats.cache_misses.values()) for kernel in COMPILED)
