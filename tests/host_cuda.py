"""Run the cupy backend, unchanged, with its CUDA kernels executed on the CPU.

A stand-in for the ``cupy`` module: arrays are NumPy arrays (``empty`` fills them with
NaN or a sentinel, so an element a kernel forgot to write shows), and ``RawModule``
compiles the real kernels/*.cu source with the host C++ compiler behind a small shim
(``__global__`` and friends defined away, ``blockIdx``/``threadIdx`` thread-local). A
launch runs every thread of its grid: one after another, or, for kernels that call
``__syncthreads``, one OS thread per CUDA thread of a block with a real barrier. Those
reduction kernels are correct for any power-of-two block up to their shared array's
size, and run here with blocks of BARRIER_BLOCK threads instead of the launch's 256:
starting 256 OS threads per block made the tests 10x slower. (test_cupy.py checks the
launcher's block size against the arrays' size in the .cu files.)

Each launch passes its arguments the way ``cuLaunchKernel`` does (an array of pointers
to the values) and the shim checks every argument's size and pointer-ness against the
kernel's C signature, so a launcher passing an ``int64`` where the kernel takes an
``int``, or arguments in the wrong order, fails here instead of reading garbage on a GPU.

What this does NOT test: anything about the GPU itself (NVRTC's code generation, the
memory model, warp scheduling, performance), CuPy's own kernels (NumPy stands in for
them), or CUDA graph capture (the backend loaded here runs steps uncaptured).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

_SHIM = r"""
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>
struct dim3 { unsigned x = 0, y = 0, z = 0; };
thread_local dim3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
using std::cos; using std::exp; using std::log; using std::max; using std::min; using std::sqrt;
inline unsigned __umulhi(unsigned a, unsigned b) {
    return (unsigned)(((unsigned long long)a * b) >> 32);
}
static std::barrier<>* block_barrier = nullptr;
static int launch_error = 0;
inline void __syncthreads() {
    if (block_barrier) block_barrier->arrive_and_wait();
    else if (blockDim.x > 1) launch_error = 2;  // a barrier in a sequentially run block
}
"""

_LAUNCHER = r"""
template <typename... A, std::size_t... I>
int call_with(void (*kernel)(A...), void** args, const long long* sizes,
              const int* pointers, std::index_sequence<I...>) {
    const long long want[] = {(long long)sizeof(A)..., 0};
    const int is_pointer[] = {(int)std::is_pointer<A>::value..., 0};
    for (std::size_t i = 0; i < sizeof...(A); ++i) {
        if (sizes[i] != want[i]) return 100 + (int)i;                // wrong size
        if (pointers[i] && !is_pointer[i]) return 200 + (int)i;      // array for a scalar
    }
    kernel(*static_cast<A*>(args[I])...);
    return 0;
}
template <typename... A>
int launch(void (*kernel)(A...), unsigned grid, unsigned block, void** args, int nargs,
           const long long* sizes, const int* pointers, int threaded) {
    if (nargs != (int)sizeof...(A)) return 1;
    gridDim.x = grid; blockDim.x = block; launch_error = 0;
    auto seq = std::index_sequence_for<A...>{};
    for (unsigned b = 0; b < grid; ++b) {
        if (threaded) {
            std::barrier<> bar((std::ptrdiff_t)block);
            block_barrier = &bar;
            std::vector<std::thread> threads;
            std::vector<int> codes(block, 0);
            for (unsigned t = 0; t < block; ++t)
                threads.emplace_back([&, t] {
                    blockIdx.x = b; threadIdx.x = t;
                    codes[t] = call_with(kernel, args, sizes, pointers, seq);
                    bar.arrive_and_drop();  // a thread that returned waits for no one
                });
            for (auto& th : threads) th.join();
            block_barrier = nullptr;
            for (int c : codes) if (c) return c;
        } else {
            blockIdx.x = b;
            for (unsigned t = 0; t < block; ++t) {
                threadIdx.x = t;
                int c = call_with(kernel, args, sizes, pointers, seq);
                if (c) return c;
            }
        }
        if (launch_error) return launch_error;
    }
    return 0;
}
"""

# kernels that reduce in shared memory: their threads must run together (any other
# kernel reaching __syncthreads in a block of several threads fails the launch)
_BARRIER_KERNELS = ("conv2d_backward_weight", "row_sum")
BARRIER_BLOCK = 8
_ENTRY = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(')
_BUILD_DIR = Path(tempfile.gettempdir()) / f"fastlenet-host-cuda-{hashlib.sha1(_SHIM.encode()).hexdigest()[:8]}"


def _build(code: str):
    names = _ENTRY.findall(code)
    exports = "\n".join(
        f'extern "C" int launch_{n}(unsigned g, unsigned b, void** a, int n, const long long* s, '
        f"const int* p, int t) {{ return launch(&{n}, g, b, a, n, s, p, t); }}" for n in names)
    text = _SHIM + code + _LAUNCHER + exports
    digest = hashlib.sha1(text.encode()).hexdigest()[:16]
    _BUILD_DIR.mkdir(exist_ok=True)
    lib = _BUILD_DIR / f"k{digest}.so"
    if not lib.exists():
        # per-process names, then an atomic rename: test runs may build side by side
        src = _BUILD_DIR / f"k{digest}-{os.getpid()}.cpp"
        src.write_text(text)
        tmp = _BUILD_DIR / f"k{digest}-{os.getpid()}.tmp.so"
        subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread",
                        "-o", str(tmp), str(src)], check=True, capture_output=True, text=True)
        tmp.replace(lib)
        src.unlink()
    return ctypes.CDLL(str(lib)), names


_CTYPE = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
          np.dtype(np.uint64): ctypes.c_uint64, np.dtype(np.float64): ctypes.c_double,
          np.dtype(np.float32): ctypes.c_float}


class _Function:
    def __init__(self, lib, name: str, threaded: bool):
        self._launch = getattr(lib, f"launch_{name}")
        self._launch.restype = ctypes.c_int
        self.name = name
        self.threaded = threaded

    def __call__(self, grid, block, args):
        values, sizes, pointers = [], [], []
        for a in args:
            if isinstance(a, np.ndarray):
                assert a.flags.c_contiguous, f"{self.name}: non-contiguous array argument"
                values.append(ctypes.c_void_p(a.ctypes.data))
                sizes.append(8)
                pointers.append(1)
            elif isinstance(a, np.generic):
                values.append(_CTYPE[a.dtype](a.item()))
                sizes.append(a.dtype.itemsize)
                pointers.append(0)
            else:  # CuPy packs a Python int or float by its own rules: the launcher must not pass one
                raise TypeError(f"{self.name}: argument {a!r} is a Python {type(a).__name__}, "
                                "pass a NumPy scalar of the kernel's C type")
        n = len(values)
        argv = (ctypes.c_void_p * n)(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        threads = min(block[0], BARRIER_BLOCK) if self.threaded else block[0]
        code = self._launch(ctypes.c_uint(grid[0]), ctypes.c_uint(threads), argv, ctypes.c_int(n),
                            (ctypes.c_longlong * n)(*sizes), (ctypes.c_int * n)(*pointers),
                            ctypes.c_int(self.threaded))
        if code == 1:
            raise TypeError(f"{self.name}: {n} arguments, the kernel takes another number")
        if code == 2:
            raise RuntimeError(f"{self.name} calls __syncthreads; run it threaded")
        if 100 <= code < 200:
            raise TypeError(f"{self.name}: argument {code - 100} has the wrong size")
        if code >= 200:
            raise TypeError(f"{self.name}: argument {code - 200} is an array, the kernel takes a scalar")


class RawModule:
    def __init__(self, code: str, options=()):
        self.code = code
        self._lib = None

    def compile(self):
        self._lib, self._names = _build(self.code)

    def get_function(self, name: str):
        if self._lib is None:
            self.compile()
        if name not in self._names:
            raise AttributeError(f"no kernel {name}")
        return _Function(self._lib, name, threaded=name.startswith(_BARRIER_KERNELS))


def _empty(shape, dtype=np.float64):
    dtype = np.dtype(dtype)
    fill = np.nan if dtype.kind == "f" else -123456789
    return np.full(shape, fill, dtype=dtype)


class _Stream:
    def synchronize(self):
        pass


def make_module() -> types.ModuleType:
    """A module that stands in for ``cupy`` (NumPy for everything but the above)."""
    module = types.ModuleType("cupy")
    module.__getattr__ = lambda name: getattr(np, name)
    module.empty = _empty
    module.empty_like = lambda a, dtype=None: _empty(np.shape(a), dtype or a.dtype)
    module.asnumpy = np.asarray
    module.RawModule = RawModule
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, is_hip=False,
                                    CUDARuntimeError=type("CUDARuntimeError", (RuntimeError,), {}))
    module.cuda = types.SimpleNamespace(runtime=runtime, get_current_stream=_Stream)
    return module


def load_backend():
    """A CupyBackend instance built on the stand-in module (the real one is untouched)."""
    import importlib.util

    spec = importlib.util.find_spec("fastlenet.backends.cupy_backend")
    backend_module = importlib.util.module_from_spec(spec)
    saved = sys.modules.get("cupy")
    sys.modules["cupy"] = make_module()
    try:
        spec.loader.exec_module(backend_module)
    finally:
        if saved is None:
            del sys.modules["cupy"]
        else:
            sys.modules["cupy"] = saved
    backend = backend_module.CupyBackend()
    backend.capture_step = lambda step: step  # no CUDA graphs on the CPU
    return backend
