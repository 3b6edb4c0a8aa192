"""The CuPy backend: hand-written CUDA kernels (``kernels/*.cu``) on an NVIDIA GPU.

Every kernel of :class:`~fastlenet.backends.base.Backend` that a training step calls
runs as one of the project's own CUDA kernels (docs/cuda.md lists them file by file;
each file's header gives its layouts, batch innermost as every backend, and its
thread-to-element map), compiled once per process with NVRTC through ``cupy.RawModule``
(CuPy also caches the binaries on disk). ``FASTLENET_CUDA_BLOCKS=fused`` selects the fused
conv blocks and fully connected chain (cupy_conv_block.py, cupy_dense_chain.py); the
separate kernels stay the default until a GPU run shows the fused ones faster.

The linear layers use dense.cu's GEMM, not cuBLAS, so that :meth:`CupyBackend.capture_step`
can record a whole forward and backward pass in a CUDA graph (CuPy cannot capture cuBLAS
calls); captured and uncaptured steps then run the same kernels and give the same bits.
What has no kernel here (the batch-norm blocks, run as chains of this backend's kernels;
tanh; the augmenter's warp and smoothing; the layers' small element-wise maths) is the
reference's array maths run by CuPy (``xp = cupy``); the training step's reductions (the
loss mean, the count of correct predictions) are the project's, compiled when the
backend starts rather than by CuPy inside the first steps.

The module imports with CuPy installed even on a machine without a GPU (the kernel
sources can then still be compiled to PTX, which the tests do); constructing the
backend checks for a CUDA device, compiles every kernel (NVRTC) and runs once what a
training run calls that loads a CUDA library lazily (CuPy's own kernels, a cuBLAS matrix
product), so the registry reports the backend as unusable, with the cause, when any of
it fails, instead of the run failing mid-training.

Memory ownership: as in the reference, every array a kernel returns or keeps in a ctx
is allocated by that call; a ctx may also hold the caller's input and weights, which the
layers never change before the backward.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

try:
    import cupy
except ImportError as exc:
    raise ImportError(f"{exc}; install CuPy for your CUDA version, e.g. "
                      "pip install 'fastlenet[cupy-cuda12]'") from exc

from ..errors import ArrayError
from ..kernels import sources
from . import cupy_conv_block, cupy_dense_chain, philox
from .cupy_kernel_set import kernel_set
from .cuda_graph import CapturedStep, first_line
from .reference import ReferenceBackend

THREADS = 256  # threads per block of the one-thread-per-element kernels
# Must equal WEIGHT_THREADS / ROW_THREADS / LOSS_THREADS / BN_THREADS in conv2d.cu /
# dense.cu / loss.cu / batchnorm.cu:
# those kernels reduce in shared memory sized for exactly this many threads.
REDUCE_THREADS = 256
# Launch shapes, chosen by the recorded step's time (docs/cuda.md, Launch constants;
# benchmarks/gpu_kernels.py sweeps them): the conv weight gradient cuts its sums into
# slices until it has about WEIGHT_BLOCKS blocks;
WEIGHT_BLOCKS = 1024
# a matrix product with fewer outputs than GEMM_THREADS splits its inner dimension into
# chunks (of at least GEMM_MIN_CHUNK products) until it has about that many threads;
GEMM_THREADS = 131072
GEMM_MIN_CHUNK = 16
# the conv forward's threads each compute up to CONV_GROUP output channels (at most
# CONV_GROUP in conv2d.cu), fewer while that leaves fewer than CONV_THREADS threads.
CONV_GROUP = 8
CONV_THREADS = 32768

# NVRTC options per source file. The element-wise update and the loss follow the
# reference's maths operation by operation, so no multiply-add may be contracted.
OPTIONS: dict[str, tuple[str, ...]] = {"adam": ("--fmad=false",), "loss": ("--fmad=false",)}
# Where the install commands of the messages come from: CuPy's toolkit extra brings
# NVRTC, cuBLAS and the runtime as NVIDIA wheels (pyproject.toml's cupy-cuda12/13 extras).
INSTALL_HINT = ("pip install 'fastlenet[cupy-cuda12]' (or [cupy-cuda13] for a CUDA 13 "
                "driver), which brings CuPy's CUDA libraries")

# The kernels each file must define (each in an _f32 and an _f64 version, except the
# counter update); the backend fetches them by these names.
KERNELS: dict[str, tuple[str, ...]] = {
    "conv2d": ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight"),
    "conv_block": ("conv_block_forward", "conv_block_backward"),
    "pool": ("maxpool2d_forward", "maxpool2d_backward", "avgpool2d_forward",
             "avgpool2d_backward"),
    "dense": ("gemm", "sum_splits", "row_sum"),
    "dense_chain": ("dense_chain_forward", "dense_chain_backward"),
    "batchnorm": ("batchnorm_stats", "batchnorm_forward", "batchnorm_backward_reduce",
                  "batchnorm_backward_input"),
    "loss": ("softmax_cross_entropy", "loss_mean", "count_correct"),
    "batch": ("gather_batch",),
    "adam": ("adam_update",),
    "scalars": ("set_scalars",),
    "random": ("uniform", "normal"),
}
UNTYPED_KERNELS: dict[str, tuple[str, ...]] = {"random": ("advance_counter",)}

_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_NULL = np.uint64(0)  # a null pointer argument (an absent bias)


def entry_points() -> dict[str, list[str]]:
    """File stem -> every ``extern "C"`` kernel name the backend launches from it."""
    return {stem: [f"{name}_{suffix}" for name in names for suffix in ("f32", "f64")]
            + list(UNTYPED_KERNELS.get(stem, ())) for stem, names in KERNELS.items()}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _i32(value: int) -> np.int32:
    return np.int32(value)


class PhiloxGenerator:
    """Uniform numbers on the device from Philox4x32-10 (kernels/random.cu; the numba
    backend draws the same numbers on the CPU, backends/philox.py).

    State: a 64-bit key derived from the seed and a 64-bit counter, both in the device
    array ``state`` (key, counter): draws need no host round trip, a replayed CUDA graph
    advances the counter, and restoring a state (``set_rng_state``) reaches the draws of
    a recorded step too, as they read the key from the device.
    """

    def __init__(self, backend: CupyBackend, seed: int):
        self._backend = backend
        self.state = cupy.asarray(np.array([philox.seed_key(seed), 0], dtype=np.uint64))

    def random(self, shape, dtype=np.float64):
        """Uniform numbers in [0, 1), a new device array of ``shape`` and ``dtype``."""
        return self._draw("uniform", shape, dtype)

    def standard_normal(self, shape, dtype=np.float64):
        """Standard normal numbers, a new device array of ``shape`` and ``dtype``."""
        return self._draw("normal", shape, dtype)

    def _draw(self, kernel: str, shape, dtype):
        out = cupy.empty(shape, dtype=dtype)
        count = out.size
        if count:
            self._backend._launch("random", kernel, out.dtype, count,
                                  (out, np.int64(count), self.state))
            self._backend._function("random", "advance_counter")(
                (1,), (1,), (self.state, np.int64(count)))
        return out


class CupyBackend(ReferenceBackend):
    name = "cupy"
    xp = cupy

    def __init__(self):
        try:
            devices = cupy.cuda.runtime.getDeviceCount()
        except cupy.cuda.runtime.CUDARuntimeError as exc:
            raise RuntimeError(f"CuPy finds no usable CUDA device ({exc})") from exc
        if devices < 1:
            raise RuntimeError("CuPy finds no CUDA device")
        code = sources()
        self._modules = {}
        tick = time.perf_counter()
        for stem in KERNELS:
            module = cupy.RawModule(code=code[stem], options=OPTIONS.get(stem, ()))
            try:
                module.compile()  # now, so a missing or broken NVRTC makes the backend unusable
            except Exception as exc:
                raise RuntimeError(f"NVRTC cannot compile kernels/{stem}.cu "
                                   f"({first_line(exc)}); {INSTALL_HINT}") from exc
            self._modules[stem] = module
        self._compile_seconds = time.perf_counter() - tick
        self._functions = {}
        self._load_libraries()

    @staticmethod
    def _load_libraries() -> None:
        """Run once what a training run calls that loads a CUDA library on first use, so a
        missing library makes the backend unusable here, with the cause, rather than
        stopping a run: CuPy's own element-wise and reduction kernels (compiled with
        NVRTC), and a matrix product (cuBLAS; the augmenter's smoothing uses them)."""
        a = cupy.ones((4, 4), dtype=np.float32)
        checks = (("its element-wise and reduction kernels (NVRTC)",
                   lambda: ((a * 2) > 1).sum(axis=0).argmax()),
                  ("a matrix product (cuBLAS)", lambda: cupy.matmul(a, a)))
        for what, run in checks:
            try:
                run()
                cupy.cuda.get_current_stream().synchronize()
            except Exception as exc:
                raise RuntimeError(f"CuPy cannot run {what} here ({first_line(exc)}); "
                                   f"{INSTALL_HINT}") from exc

    def prepare(self, dtype) -> str | None:
        """The kernels were compiled (or loaded from CuPy's disk cache) by the constructor;
        say so once if that took long enough to notice."""
        seconds, self._compile_seconds = self._compile_seconds, 0.0
        if seconds < 1.0:
            return None
        return (f"cupy: compiled the CUDA kernels with NVRTC in {seconds:.1f} s "
                "(later runs load them from CuPy's disk cache)")

    # ------------------------------------------------------------ kernel launch
    def _function(self, stem: str, name: str):
        key = (stem, name)
        if key not in self._functions:
            self._functions[key] = self._modules[stem].get_function(name)
        return self._functions[key]

    def _launch(self, stem: str, name: str, dtype, count: int, args: tuple) -> None:
        """Launch ``<name>_<f32|f64>`` with one thread per element of ``count``."""
        suffix = _SUFFIX.get(np.dtype(dtype))
        if suffix is None:
            raise TypeError(f"the cupy backend's kernels take float32 or float64 arrays, "
                            f"not {np.dtype(dtype)}")
        if count:  # a grid of zero blocks is a launch error
            self._function(stem, f"{name}_{suffix}")((_ceil_div(count, THREADS),), (THREADS,),
                                                     args)

    def _launch_blocks(self, stem: str, name: str, dtype, blocks: int, args: tuple) -> None:
        """Launch a one-block-per-output-element reduction kernel."""
        if blocks:
            self._function(stem, f"{name}_{_SUFFIX[np.dtype(dtype)]}")((blocks,), (REDUCE_THREADS,),
                                                                      args)

    # ------------------------------------------------------------- batch gather
    def to_batch_last(self, x_nchw, index=None):
        if index is None:
            return super().to_batch_last(x_nchw, index)
        return self._gather(x_nchw, None, index)[0]

    def gather_batch(self, x, y, index):
        return self._gather(x, y, index)

    def _gather(self, x, y, index):
        """x[index] batch innermost, and y[index], in one launch (kernels/batch.cu); the
        reference's three operations where the kernel does not apply."""
        if (x.dtype not in _SUFFIX or x.ndim < 2 or not x.size or index.ndim != 1
                or index.dtype.kind not in "iu" or (y is not None and y.dtype != np.int64)):
            xb = super().to_batch_last(x, index)
            return xb, (None if y is None else y[index])
        x, index = cupy.ascontiguousarray(x), cupy.ascontiguousarray(index, dtype=np.int64)
        n, b = x.shape[0], index.shape[0]
        xb = cupy.empty((*x.shape[1:], b), dtype=x.dtype)
        yb = None if y is None else cupy.empty(b, dtype=np.int64)
        self._launch("batch", "gather_batch", x.dtype, xb.size,
                     (x, _NULL if y is None else cupy.ascontiguousarray(y), index, xb,
                      _NULL if yb is None else yb, np.int64(n), np.int64(x.size // n), _i32(b)))
        return xb, yb

    @staticmethod
    def _operands(*arrays):
        """C-contiguous device arrays of one float dtype (the kernels ignore strides)."""
        dtype = arrays[0].dtype
        for a in arrays[1:]:
            if a.dtype != dtype:
                raise TypeError(f"cupy backend: mixed dtypes {dtype} and {a.dtype}; "
                                "convert the arrays to one dtype")
        return [cupy.ascontiguousarray(a) for a in arrays]

    def _row_sum(self, a):
        """a: (R, L) contiguous -> (R,) row sums."""
        r, length = a.shape
        out = cupy.empty(r, dtype=a.dtype)
        self._launch_blocks("dense", "row_sum", a.dtype, r,
                            (a, out, _i32(r), np.int64(length)))
        return out

    def _gemm(self, a, b, bias, m: int, n: int, kd: int, trans_a: bool, trans_b: bool):
        """(M, N) = op(a) @ op(b) (+ bias[:, None]); see kernels/dense.cu. The inner
        dimension is split when the product has fewer than about GEMM_THREADS outputs."""
        out = cupy.empty((m, n), dtype=a.dtype)
        wanted = max(1, min(_ceil_div(kd, GEMM_MIN_CHUNK), _ceil_div(GEMM_THREADS, m * n or 1)))
        chunk = max(1, _ceil_div(kd, wanted))
        splits = max(1, _ceil_div(kd, chunk))  # as the kernel counts them
        target = out if splits == 1 else cupy.empty((splits, m, n), dtype=a.dtype)
        self._launch("dense", "gemm", a.dtype, splits * m * n,
                     (a, b, _NULL if bias is None or splits > 1 else bias, target, _i32(m),
                      _i32(n), _i32(kd), _i32(trans_a), _i32(trans_b), _i32(chunk)))
        if splits > 1:
            self._launch("dense", "sum_splits", a.dtype, m * n,
                         (target, _NULL if bias is None else bias, out, _i32(splits), _i32(m),
                          _i32(n)))
        return out

    # ----------------------------------------------------------- device helpers
    def to_numpy(self, a):
        return cupy.asnumpy(a)

    def synchronize(self) -> None:
        cupy.cuda.get_current_stream().synchronize()

    def default_rng(self, seed: int):
        return PhiloxGenerator(self, seed)

    def rng_state(self, rng) -> dict:
        return philox.to_state(*(int(v) for v in cupy.asnumpy(rng.state)))

    def set_rng_state(self, rng, state: dict) -> None:
        key, counter = philox.from_state(state, self.name)
        # in place: recorded steps read the state from this array
        rng.state[...] = cupy.asarray(np.array([key, counter], dtype=np.uint64))

    def set_scalars(self, out, values) -> None:
        values = [float(v) for v in values]
        if out.ndim != 1 or out.shape[0] != len(values) or len(values) > 4 \
                or not out.flags.c_contiguous:
            raise ValueError(f"set_scalars: {len(values)} values for an array of shape "
                             f"{out.shape}; it takes a contiguous 1-D array of 1 to 4 elements")
        self._launch("scalars", "set_scalars", out.dtype, len(values),
                     (out, _i32(len(values)),
                      *(np.float64(v) for v in values + [0.0] * (4 - len(values)))))

    def device_description(self) -> str:
        try:
            return describe_device(device_facts())
        except Exception as exc:  # info must still print the rest
            return f"a CUDA device whose properties could not be read ({first_line(exc)})"

    def device_failure(self, exc: BaseException) -> tuple[str, str] | None:
        cuda = cupy.cuda
        if isinstance(exc, cuda.memory.OutOfMemoryError):
            try:
                free, total = cuda.runtime.memGetInfo()
            except Exception:  # a device too broken to say: the allocation's size will do
                return "memory", first_line(exc)
            return "memory", f"{first_line(exc)}; {free / 2**30:.2f} of {total / 2**30:.1f} GiB free"
        if isinstance(exc, (cuda.runtime.CUDARuntimeError, cuda.driver.CUDADriverError)):
            return "device", first_line(exc)
        return None

    # -------------------------------------------------------------- convolution
    def conv2d_forward(self, x, w, b, stride: int, pad: int):
        OH, OW = self.check_conv2d(x, w, b, stride, pad)  # the kernel reads past bad shapes
        C, H, W, N = x.shape
        K, _, KH, KW = w.shape
        x, w, *bias = self._operands(x, w, *(() if b is None else (b,)))
        y = cupy.empty((K, OH, OW, N), dtype=x.dtype)
        dims = tuple(map(_i32, (C, H, W, N, K, KH, KW, OH, OW, stride, pad)))
        # a thread computes `group` output channels: the most (up to CONV_GROUP) that
        # still leave about CONV_THREADS threads
        positions, group = OH * OW * N, CONV_GROUP
        while group > 1 and _ceil_div(K, group) * positions < CONV_THREADS:
            group //= 2
        group = max(1, min(group, K))
        self._launch("conv2d", "conv2d_forward", x.dtype, _ceil_div(K, group) * positions,
                     (x, w, bias[0] if bias else _NULL, y) + dims + (_i32(group),))
        return y, (x, w, b is not None, dims)

    def conv2d_backward(self, dy, ctx, need_dx: bool = True):
        x, w, has_bias, dims = ctx
        dy = self._operands(dy, x)[0]
        K, OH, wtotal = int(w.shape[0]), int(dy.shape[1]), int(w.size)
        if wtotal == 0:  # no weights (no input or no output channels): nothing to slice
            db = self._row_sum(dy.reshape(K, dy.size // K if K else 0)) if has_bias else None
            dx = cupy.zeros(x.shape, dtype=x.dtype) if need_dx else None
            return dx, cupy.empty(w.shape, dtype=x.dtype), db
        # the weight gradient's blocks: S slices of `rows` output rows per weight, enough
        # of them to fill the device when the layer has few weights (kernels/conv2d.cu);
        # dense.cu's sum_splits adds the slices into dw followed by db
        rows = _ceil_div(OH, min(OH, _ceil_div(WEIGHT_BLOCKS, wtotal)))
        slices = _ceil_div(OH, rows)
        part = cupy.empty(slices * (wtotal + K), dtype=x.dtype)
        self._launch_blocks("conv2d", "conv2d_backward_weight", x.dtype, slices * wtotal,
                            (dy, x, part) + dims + (_i32(rows),))
        grads = cupy.empty(wtotal + K, dtype=x.dtype)
        self._launch("dense", "sum_splits", x.dtype, wtotal + K,
                     (part, _NULL, grads, _i32(slices), _i32(1), _i32(wtotal + K)))
        dw = grads[:wtotal].reshape(w.shape)
        db = grads[wtotal:] if has_bias else None
        if not need_dx:
            return None, dw, db
        dx = cupy.empty(x.shape, dtype=x.dtype)
        self._launch("conv2d", "conv2d_backward_input", x.dtype, dx.size, (dy, w, dx) + dims)
        return dx, dw, db

    def conv2d_relu_maxpool2d_forward(self, x, w, b, stride: int, pad: int, size: int,
                                      pool_stride: int):
        return (cupy_conv_block.forward(self, x, w, b, stride, pad, size, pool_stride)
                or super().conv2d_relu_maxpool2d_forward(x, w, b, stride, pad, size, pool_stride))

    def conv2d_relu_maxpool2d_backward(self, dy, ctx, need_dx: bool = True):
        return (cupy_conv_block.backward(self, dy, ctx, need_dx)
                or super().conv2d_relu_maxpool2d_backward(dy, ctx, need_dx=need_dx))

    # ------------------------------------------------------------------ pooling
    def _pool_dims(self, x, size: int, stride: int) -> tuple:
        OH, OW = self.check_pool2d(x, size, stride)
        C, H, W, N = x.shape
        return tuple(map(_i32, (C, H, W, N, OH, OW, size, stride)))

    def _maxpool(self, x, size: int, stride: int, relu: bool):
        dims = self._pool_dims(x, size, stride)
        (x,) = self._operands(x)
        C, _, _, N, OH, OW = (int(d) for d in dims[:6])
        y = cupy.empty((C, OH, OW, N), dtype=x.dtype)
        arg = cupy.empty(y.shape, dtype=np.int32)
        self._launch("pool", "maxpool2d_forward", x.dtype, y.size,
                     (x, y, arg) + dims + (_i32(relu),))
        return y, (arg, x.shape, dims)

    def maxpool2d_forward(self, x, size: int, stride: int):
        return self._maxpool(x, size, stride, relu=False)

    def maxpool2d_backward(self, dy, ctx):
        arg, x_shape, dims = ctx
        (dy,) = self._operands(dy)
        dx = cupy.empty(x_shape, dtype=dy.dtype)
        self._launch("pool", "maxpool2d_backward", dy.dtype, dx.size, (dy, arg, dx) + dims)
        return dx

    def relu_maxpool2d_forward(self, x, size: int, stride: int):
        # dead windows get the offset size*size, which the backward matches to no input
        return self._maxpool(x, size, stride, relu=True)

    def relu_maxpool2d_backward(self, dy, ctx):
        return self.maxpool2d_backward(dy, ctx)

    def avgpool2d_forward(self, x, size: int, stride: int):
        dims = self._pool_dims(x, size, stride)
        (x,) = self._operands(x)
        C, _, _, N, OH, OW = (int(d) for d in dims[:6])
        y = cupy.empty((C, OH, OW, N), dtype=x.dtype)
        self._launch("pool", "avgpool2d_forward", x.dtype, y.size, (x, y) + dims)
        return y, (x.shape, dims)

    def avgpool2d_backward(self, dy, ctx):
        x_shape, dims = ctx
        (dy,) = self._operands(dy)
        dx = cupy.empty(x_shape, dtype=dy.dtype)
        self._launch("pool", "avgpool2d_backward", dy.dtype, dx.size, (dy, dx) + dims)
        return dx

    # ------------------------------------------------------------ normalisation
    def batchnorm_forward(self, x, gamma, beta, running_mean, running_var, *, training: bool,
                          momentum: float, eps: float):
        self.check_batchnorm(x, gamma, beta, running_mean, running_var)
        x, gamma, beta = self._operands(x, gamma, beta)
        C, M = x.shape
        mean, inv_std = cupy.empty(C, dtype=x.dtype), cupy.empty(C, dtype=x.dtype)
        # updated in place by the kernel: a contiguous copy would be updated instead
        rm, rv = (cupy.ascontiguousarray(a) for a in (running_mean, running_var))
        self._launch_blocks("batchnorm", "batchnorm_stats", x.dtype, C,
                            (x, rm, rv, mean, inv_std, _i32(C), np.int64(M), _i32(training),
                             np.float64(momentum), np.float64(eps)))
        if training and rm is not running_mean:
            running_mean[...] = rm
        if training and rv is not running_var:
            running_var[...] = rv
        y = cupy.empty((C, M), dtype=x.dtype)
        self._launch("batchnorm", "batchnorm_forward", x.dtype, C * M,
                     (x, mean, inv_std, gamma, beta, y, _i32(C), np.int64(M)))
        return y, (x, mean, inv_std, gamma, bool(training))

    def batchnorm_backward(self, dy, ctx, need_dx: bool = True):
        x, mean, inv_std, gamma, training = ctx
        dy = self._operands(dy, x)[0]
        C, M = x.shape
        dgamma, dbeta = cupy.empty(C, dtype=x.dtype), cupy.empty(C, dtype=x.dtype)
        self._launch_blocks("batchnorm", "batchnorm_backward_reduce", x.dtype, C,
                            (x, dy, mean, inv_std, dgamma, dbeta, _i32(C), np.int64(M)))
        if not need_dx:
            return None, dgamma, dbeta
        dx = cupy.empty((C, M), dtype=x.dtype)
        self._launch("batchnorm", "batchnorm_backward_input", x.dtype, C * M,
                     (x, dy, mean, inv_std, gamma, dgamma, dbeta, dx, _i32(C), np.int64(M),
                      _i32(training)))
        return dx, dgamma, dbeta

    # ---------------------------------------------------------- dense and loss
    def linear_forward(self, x, w, b):
        self.check_linear(x, w, b)  # the kernel would read past bad shapes
        (IN, N), (OUT, _) = x.shape, w.shape
        x, w, *bias = self._operands(x, w, *(() if b is None else (b,)))
        y = self._gemm(w, x, bias[0] if bias else None, OUT, N, IN,
                       trans_a=False, trans_b=False)
        return y, (x, w, b is not None)

    def linear_backward(self, dy, ctx, need_dx: bool = True):
        x, w, has_bias = ctx
        dy = self._operands(dy, x)[0]
        (IN, N), (OUT, _) = x.shape, w.shape
        dw = self._gemm(dy, x, None, OUT, IN, N, trans_a=False, trans_b=True)
        db = self._row_sum(dy) if has_bias else None
        dx = self._gemm(w, dy, None, IN, N, OUT, trans_a=True, trans_b=False) \
            if need_dx else None
        return dx, dw, db

    def fuses_dense_chain(self) -> bool:
        """With FASTLENET_CUDA_BLOCKS=fused (kernels/dense_chain.cu, cupy_dense_chain.py)."""
        return kernel_set() == "fused"

    def dense_chain_forward(self, x, weights, biases):
        return cupy_dense_chain.forward(self, x, weights, biases)

    def dense_chain_backward(self, dy, ctx, need_dx: bool = True):
        return cupy_dense_chain.backward(self, dy, ctx, need_dx)

    def softmax_cross_entropy(self, logits, labels, label_smoothing: float = 0.0):
        self.check_loss(logits, labels)  # the kernel would read past bad shapes
        (logits,) = self._operands(logits)
        k, n = logits.shape
        labels = cupy.ascontiguousarray(labels, dtype=np.int64)
        per_sample = cupy.empty(n, dtype=logits.dtype)
        grad = cupy.empty_like(logits)
        self._launch("loss", "softmax_cross_entropy", logits.dtype, n,
                     (logits, labels, per_sample, grad, _i32(k), _i32(n),
                      np.float64(1.0 - label_smoothing), np.float64(label_smoothing / k)))
        loss = cupy.empty((), dtype=logits.dtype)
        self._launch_blocks("loss", "loss_mean", logits.dtype, 1, (per_sample, loss, _i32(n)))
        return loss, grad

    def count_correct(self, logits, labels, correct) -> None:
        self.check_count(logits, labels, correct)
        (logits,) = self._operands(logits)
        labels = cupy.ascontiguousarray(labels, dtype=np.int64)
        k, n = logits.shape
        self._launch_blocks("loss", "count_correct", logits.dtype, 1,
                            (logits, labels, correct, _i32(k), _i32(n)))

    def adam_update_device(self, p, g, m, v, factors, *, beta1: float, beta2: float,
                           eps: float, weight_decay: float) -> None:
        self.check_adam(p, g, m, v)
        if factors.shape != (3,) or factors.dtype != p.dtype or not factors.flags.c_contiguous:
            raise ArrayError(f"adam_update: factors must be a contiguous {p.dtype}[3] array "
                             f"(decay, step_size, bias2), got {factors.dtype}{list(factors.shape)}")
        g = cupy.ascontiguousarray(g)  # the kernel ignores strides
        self._launch("adam", "adam_update", p.dtype, p.size,
                     (p, g, m, v, np.int64(p.size), factors, np.float64(beta1),
                      np.float64(beta2), np.float64(eps), _i32(bool(weight_decay))))

    # ------------------------------------------------------------ graph capture
    def capture_step(self, step, signature=lambda: ()):
        if cupy.cuda.runtime.is_hip:  # CuPy has no graph capture on ROCm
            return step
        return CapturedStep(step, signature)


# ------------------------------------------------------------- fastlenet info
def device_facts(device: int | None = None) -> dict:
    """What ``fastlenet info`` says about the current (or given) CUDA device, as plain
    values: name, index and count, memory, compute capability, the CUDA runtime and
    driver versions (CUDA's encoding, e.g. 13000 for 13.0), the driver's release (from
    /proc, where the kernel module tells it), CuPy's and NVRTC's versions."""
    runtime = cupy.cuda.runtime
    index = cupy.cuda.Device().id if device is None else device
    props = runtime.getDeviceProperties(index)
    name = props["name"]
    try:
        nvrtc = "{}.{}".format(*cupy.cuda.nvrtc.getVersion())
    except Exception:  # the backend compiled with it; only an odd CuPy lacks the call
        nvrtc = None
    return {"name": name.decode() if isinstance(name, bytes) else str(name), "index": index,
            "count": runtime.getDeviceCount(), "memory_bytes": int(props["totalGlobalMem"]),
            "compute_capability": f"{props['major']}.{props['minor']}",
            "runtime_version": runtime.runtimeGetVersion(),
            "driver_version": runtime.driverGetVersion(),
            "driver_release": _driver_release(), "cupy": cupy.__version__, "nvrtc": nvrtc}


def _driver_release() -> str | None:
    return _release_of("/proc/driver/nvidia/version")


def _release_of(path: str) -> str | None:
    """The release in the NVIDIA kernel module's version file, e.g. ``580.159.04``."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text)
    return found.group(1) if found else None


def _cuda_version(code: int) -> str:
    return f"{code // 1000}.{code % 1000 // 10}"


def describe_device(facts: dict) -> str:
    """One line from :func:`device_facts`, e.g. ``NVIDIA H200 (device 0 of 1), 139.8 GiB,
    compute capability 9.0; CUDA runtime 13.0, driver 580.159.04 (CUDA 13.0); CuPy
    14.2.0, NVRTC 13.0``."""
    driver = f"driver {facts['driver_release']} (CUDA {_cuda_version(facts['driver_version'])})" \
        if facts.get("driver_release") else f"driver for CUDA {_cuda_version(facts['driver_version'])}"
    nvrtc = f", NVRTC {facts['nvrtc']}" if facts.get("nvrtc") else ""
    return (f"{facts['name']} (device {facts['index']} of {facts['count']}), "
            f"{facts['memory_bytes'] / 2 ** 30:.1f} GiB, compute capability "
            f"{facts['compute_capability']}; CUDA runtime "
            f"{_cuda_version(facts['runtime_version'])}, {driver}; CuPy {facts['cupy']}{nvrtc}")
