"""How the Numba kernels are compiled: the options, and a list of every kernel.

Every kernel is first a plain Python function (``_conv2d_forward``) and then wrapped
(``conv2d_forward = parallel(_conv2d_forward)``): with ``NUMBA_DISABLE_JIT=1`` the wrapped
names are the plain functions and ``prange`` is ``range``, so a kernel can be stepped
through in a debugger. ``cache=True`` keeps the machine code on disk, so only the first
run pays the compile (reported once by ``NumbaBackend.prepare``); the cached code is
stamped with every module of the package, since kernels inline helpers from other files.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numba

# ``fastmath`` is limited to ``contract`` (fused multiply-add) and ``reassoc`` (lets sums
# vectorize): neither lets a NaN or an infinity vanish, so a diverging run is still
# caught by the trainer's loss check. NumPy's error model: a division by zero gives inf
# or NaN instead of raising, so divisions carry no test-and-branch and loops with one
# vectorize (docs/performance.md, Numba backend).
OPTIONS = dict(cache=True, fastmath={"contract", "reassoc"}, error_model="numpy")

# every compiled function, for counting what the disk cache did not have
COMPILED: list = []

PACKAGE = Path(__file__).resolve().parent


@functools.cache
def _package_stamp() -> str:
    """A hash of every module of this package, computed once per process."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _package_locator(base):
    """``base``, Numba's disk-cache locator, for this package's kernels with the package's
    stamp instead of the kernel's own file's: a kernel's cached code holds the helpers it
    inlines from other modules (tiles.py's tiles in conv2d.py's kernels), so an edit to
    any module must recompile it."""

    class PackageLocator(base):
        def get_source_stamp(self):
            return _package_stamp()

        @classmethod
        def from_function(cls, py_func, py_file):
            if Path(py_file).resolve().parent != PACKAGE:
                return None
            return super().from_function(py_func, py_file)

    PackageLocator.__name__ = f"Package{base.__name__}"
    return PackageLocator


def _install_locators() -> None:
    """Put the package locators ahead of Numba's own, in Numba's order (NUMBA_CACHE_DIR,
    then beside the source, then the user's cache folder). A Numba without these classes
    keeps its per-file stamps."""
    from numba.core import caching

    try:
        bases = (caching.UserProvidedCacheLocator, caching.InTreeCacheLocator,
                 caching.UserWideCacheLocator)
        classes = caching.CacheImpl._locator_classes
    except AttributeError:
        return
    if not any(getattr(c, "__name__", "").startswith("Package") for c in classes):
        classes[:0] = [_package_locator(base) for base in bases]


_install_locators()


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


def inline(func):
    """``func`` as serial's, but inlined into its callers by Numba: short helpers called
    many times per task, whose call costs as much as their work."""
    return _register(numba.njit(inline="always", **OPTIONS)(func))
