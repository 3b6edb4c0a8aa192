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

Streams and CUDA graphs are emulated too, for the bookkeeping of the backend's graph
capture (``CapturedStep``): a ``Stream`` that is current inside ``with``, records events
and captures; while a stream captures, RawModule launches are recorded instead of run
(as CUDA does), and a ``Graph`` replays the recorded launches with the arguments they
were recorded with (arrays by reference, scalars by value: what a real graph bakes in).
NumPy operations standing in for CuPy's run at once and are not recorded, so a step
replays faithfully only when all its device work is RawModule launches; the tests use
such steps. ``MemoryPool`` and ``using_allocator`` route ``empty`` through the current
allocator, so the tests can see which blocks a recording holds.

What this does NOT test: anything about the GPU itself (NVRTC's code generation, the
memory model, warp scheduling, performance), CuPy's own kernels (NumPy stands in for
them), or real CUDA graphs (see ``-m gpu``).
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
#include <atomic>
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
// blocks run one after another here: a fence has nothing to order across blocks
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
template <typename T> inline T __ldcg(const T* p) { return *(volatile const T*)p; }
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
_BARRIER_KERNELS = ("conv2d_backward_weight", "row_sum", "loss_mean", "count_correct",
                    "batchnorm_stats", "batchnorm_backward_reduce",
                    "conv_block_", "dense_chain_forward", "dense_chain_backward")
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
        if _capturing is not None:  # recorded, not run, as CUDA does while capturing
            _capturing.tape.append((self, grid, block, args))
            return
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
    if _allocator.current is not None:  # what a real allocator would be asked for
        _allocator.current(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    fill = np.nan if dtype.kind == "f" else -123456789
    return np.full(shape, fill, dtype=dtype)


# ------------------------------------------------------------- streams and graphs
_capturing = None  # the Stream capturing now, if any
_allocator = types.SimpleNamespace(current=None)


class Event:
    def __init__(self, stream=None):
        self.stream = stream


class Stream:
    """A stream: current inside ``with``; captures RawModule launches into a Graph."""

    current = None  # set below: the default stream

    def __init__(self, null=False, non_blocking=False):
        self.tape = None
        self.waited: list = []  # events this stream was told to wait for
        self._outer: list = []

    def __enter__(self):
        self._outer.append(Stream.current)
        Stream.current = self
        return self

    def __exit__(self, *exc):
        Stream.current = self._outer.pop()

    def synchronize(self):
        pass

    def record(self, event=None):
        return Event(self)

    def wait_event(self, event):
        self.waited.append(event)

    def begin_capture(self, mode=None):
        global _capturing
        if _capturing is not None:
            raise RuntimeError("cudaErrorIllegalState: a capture is already running")
        self.tape = []
        _capturing = self

    def end_capture(self):
        global _capturing
        if _capturing is not self:
            raise RuntimeError("cudaErrorIllegalState: this stream is not capturing")
        _capturing = None
        graph, self.tape = Graph(self.tape), None
        return graph

    def is_capturing(self):
        return _capturing is self


class Graph:
    """The launches recorded while a stream captured, run again on every launch."""

    def __init__(self, tape):
        self.tape = tape
        self.launches = 0

    def launch(self, stream=None):
        self.launches += 1
        for function, grid, block, args in self.tape:
            function(grid, block, args)


class MemoryPool:
    """Counts what it is asked for; the arrays themselves are NumPy's."""

    def __init__(self):
        self.allocations = 0

    def malloc(self, size):
        self.allocations += 1
        return types.SimpleNamespace(size=size, pool=self)


class using_allocator:  # noqa: N801 - CuPy's name
    def __init__(self, allocator=None):
        self.allocator = allocator

    def __enter__(self):
        self.outer, _allocator.current = _allocator.current, self.allocator

    def __exit__(self, *exc):
        _allocator.current = self.outer


Stream.current = Stream(null=True)


class OutOfMemoryError(MemoryError):
    """CuPy's, with its arguments and message."""

    def __init__(self, size: int, total: int, limit: int = 0):
        super().__init__(f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes).")


def make_module() -> types.ModuleType:
    """A module that stands in for ``cupy`` (NumPy for everything but the above)."""
    module = types.ModuleType("cupy")
    module.__getattr__ = lambda name: getattr(np, name)
    module.__version__ = "host-emulation"
    module.empty = _empty
    module.empty_like = lambda a, dtype=None: _empty(np.shape(a), dtype or a.dtype)
    module.asnumpy = np.asarray
    module.RawModule = RawModule
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, is_hip=False,
                                    CUDARuntimeError=type("CUDARuntimeError", (RuntimeError,), {}),
                                    memGetInfo=lambda: (12 * 2**30, 16 * 2**30))
    module.cuda = types.SimpleNamespace(
        runtime=runtime, get_current_stream=lambda: Stream.current, Stream=Stream, Event=Event,
        MemoryPool=MemoryPool, using_allocator=using_allocator,
        memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError),
        driver=types.SimpleNamespace(CUDADriverError=type("CUDADriverError", (RuntimeError,), {})))
    return module


def load_module(cupy_module: types.ModuleType | None = None) -> types.ModuleType:
    """fastlenet.backends.cupy_backend, and the CUDA-graph module it imports
    (fastlenet.backends.cuda_graph), executed on a stand-in ``cupy``; the real modules,
    and sys.modules, are left as they were."""
    names = ("cupy", "fastlenet.backends.cuda_graph")
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules["cupy"] = cupy_module or make_module()
    try:
        # the copy cupy_backend's `from .cuda_graph import ...` then finds
        sys.modules["fastlenet.backends.cuda_graph"] = _execute("fastlenet.backends.cuda_graph")
        return _execute("fastlenet.backends.cupy_backend")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _execute(name: str) -> types.ModuleType:
    """A fresh copy of the module ``name``, run now and registered nowhere."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_backend(capture: bool = False):
    """A CupyBackend instance built on the stand-in module. Its steps run uncaptured
    unless ``capture``: the emulated graphs replay RawModule launches only, which a whole
    training step is not made of."""
    backend = load_module().CupyBackend()
    if not capture:
        backend.capture_step = lambda step, signature=None: step
    return backend
