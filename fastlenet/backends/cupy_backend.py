"""The CuPy backend: hand-written CUDA kernels (``kernels/*.cu``) on an NVIDIA GPU.

Every kernel of :class:`~fastlenet.backends.base.Backend` that a training step calls
runs as one of the project's own CUDA kernels, compiled once per process with NVRTC
through ``cupy.RawModule`` (CuPy also caches the binaries on disk):

    conv2d.cu  convolution forward, backward to the input (a gather), to the weights
    pool.cu    max-pool (first-max rule) and fused ReLU + max-pool, average pool
    dense.cu   GEMM for the linear layers, row sums for the bias gradients
    loss.cu    softmax cross-entropy with label smoothing, loss and gradient
    adam.cu    the fused AdamW update
    random.cu  Philox4x32-10 uniform and normal numbers, state on the device

Each file's header gives its layouts (batch innermost, as every backend) and its
thread-to-element map. The linear layers use dense.cu's GEMM, not cuBLAS, so that
:meth:`CupyBackend.capture_step` can record a whole forward and backward pass in a CUDA
graph (CuPy cannot capture cuBLAS calls); captured and uncaptured steps then run the
same kernels and give the same bits. The remaining small element-wise operations of the
layers (``backend.xp`` maths: ReLU masks, BatchNorm, the loss mean, argmax) are CuPy's
own kernels.

The module imports with CuPy installed even on a machine without a GPU (the kernel
sources can then still be compiled to PTX, which the tests do); constructing the
backend checks for a CUDA device and compiles every kernel, so the registry reports the
backend as unusable, with the cause, when either fails.

Memory ownership: as in the NumPy backend, every array a kernel returns or keeps in a
ctx is allocated by that call; a ctx may also hold the caller's input and weights,
which the layers never change before the backward.
"""

from __future__ import annotations

import time

import numpy as np

try:
    import cupy
except ImportError as exc:
    raise ImportError(f"{exc}; install CuPy for your CUDA version, e.g. "
                      "pip install 'fastlenet[cupy-cuda12]'") from exc

from ..kernels import sources
from .base import Backend

THREADS = 256  # threads per block of the one-thread-per-element kernels
# Must equal WEIGHT_THREADS / ROW_THREADS in conv2d.cu / dense.cu: those kernels reduce
# in shared memory sized for exactly this many threads.
REDUCE_THREADS = 256

# NVRTC options per source file. The element-wise update and the loss follow the
# generic NumPy maths operation by operation, so no multiply-add may be contracted.
OPTIONS: dict[str, tuple[str, ...]] = {"adam": ("--fmad=false",), "loss": ("--fmad=false",)}

# The kernels each file must define (each in an _f32 and an _f64 version, except the
# counter update); the backend fetches them by these names.
KERNELS: dict[str, tuple[str, ...]] = {
    "conv2d": ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight"),
    "pool": ("maxpool2d_forward", "maxpool2d_backward", "avgpool2d_forward",
             "avgpool2d_backward"),
    "dense": ("gemm", "row_sum"),
    "loss": ("softmax_cross_entropy",),
    "adam": ("adam_update",),
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
    """Uniform numbers on the device from Philox4x32-10 (kernels/random.cu).

    State: a 64-bit key derived from the seed and a 64-bit counter kept in device
    memory, so draws need no host round trip and a replayed CUDA graph advances it.
    """

    def __init__(self, backend: CupyBackend, seed: int):
        self._backend = backend
        self.key = int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0])
        self.counter = cupy.zeros(1, dtype=np.uint64)

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
                                  (out, np.int64(count), np.uint64(self.key), self.counter))
            self._backend._function("random", "advance_counter")(
                (1,), (1,), (self.counter, np.int64(count)))
        return out


class CupyBackend(Backend):
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
            module.compile()  # now, so a broken NVRTC makes the backend unusable
            self._modules[stem] = module
        self._compile_seconds = time.perf_counter() - tick
        self._functions = {}

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
        """(M, N) = op(a) @ op(b) (+ bias[:, None]); see kernels/dense.cu."""
        out = cupy.empty((m, n), dtype=a.dtype)
        self._launch("dense", "gemm", a.dtype, m * n,
                     (a, b, _NULL if bias is None else bias, out, _i32(m), _i32(n), _i32(kd),
                      _i32(trans_a), _i32(trans_b)))
        return out

    # ----------------------------------------------------------- device helpers
    def to_numpy(self, a):
        return cupy.asnumpy(a)

    def synchronize(self) -> None:
        cupy.cuda.get_current_stream().synchronize()

    def default_rng(self, seed: int):
        return PhiloxGenerator(self, seed)

    def rng_state(self, rng) -> dict:
        return {"bit_generator": "Philox4x32-10", "key": rng.key,
                "counter": int(cupy.asnumpy(rng.counter)[0])}

    def set_rng_state(self, rng, state: dict) -> None:
        if not isinstance(state, dict):
            raise TypeError(f"a generator state is a dict, not {type(state).__name__}")
        if state.get("bit_generator") != "Philox4x32-10":
            raise ValueError(f"a {state.get('bit_generator')!r} generator state does not fit "
                             "the cupy backend's Philox4x32-10 generator")
        key, counter = int(state["key"]), int(state["counter"])
        if not (0 <= key < 2 ** 64 and 0 <= counter < 2 ** 64):
            raise ValueError("generator key and counter must be 64-bit unsigned integers")
        rng.key = key
        rng.counter[...] = np.uint64(counter)

    # -------------------------------------------------------------- convolution
    def conv2d_forward(self, x, w, b, stride: int, pad: int):
        oh, ow = self.check_conv2d(x, w, b, stride, pad)  # the kernel reads past bad shapes
        c, h, wd, n = x.shape
        k, _, kh, kw = w.shape
        x, w, *bias = self._operands(x, w, *(() if b is None else (b,)))
        y = cupy.empty((k, oh, ow, n), dtype=x.dtype)
        dims = tuple(map(_i32, (c, h, wd, n, k, kh, kw, oh, ow, stride, pad)))
        self._launch("conv2d", "conv2d_forward", x.dtype, y.size,
                     (x, w, bias[0] if bias else _NULL, y) + dims)
        return y, (x, w, b is not None, dims)

    def conv2d_backward(self, dy, ctx, need_dx: bool = True):
        x, w, has_bias, dims = ctx
        dy = self._operands(dy, x)[0]
        dw = cupy.empty(w.shape, dtype=x.dtype)
        self._launch_blocks("conv2d", "conv2d_backward_weight", x.dtype, w.size,
                            (dy, x, dw) + dims)
        db = self._row_sum(dy.reshape(dy.shape[0], -1)) if has_bias else None
        if not need_dx:
            return None, dw, db
        dx = cupy.empty(x.shape, dtype=x.dtype)
        self._launch("conv2d", "conv2d_backward_input", x.dtype, dx.size, (dy, w, dx) + dims)
        return dx, dw, db

    # ------------------------------------------------------------------ pooling
    def _pool_dims(self, x, size: int, stride: int) -> tuple:
        oh, ow = self.check_pool2d(x, size, stride)
        c, h, wd, n = x.shape
        return tuple(map(_i32, (c, h, wd, n, oh, ow, size, stride)))

    def _maxpool(self, x, size: int, stride: int, relu: bool):
        dims = self._pool_dims(x, size, stride)
        (x,) = self._operands(x)
        c, _, _, n, oh, ow = (int(d) for d in dims[:6])
        y = cupy.empty((c, oh, ow, n), dtype=x.dtype)
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
        c, _, _, n, oh, ow = (int(d) for d in dims[:6])
        y = cupy.empty((c, oh, ow, n), dtype=x.dtype)
        self._launch("pool", "avgpool2d_forward", x.dtype, y.size, (x, y) + dims)
        return y, (x.shape, dims)

    def avgpool2d_backward(self, dy, ctx):
        x_shape, dims = ctx
        (dy,) = self._operands(dy)
        dx = cupy.empty(x_shape, dtype=dy.dtype)
        self._launch("pool", "avgpool2d_backward", dy.dtype, dx.size, (dy, dx) + dims)
        return dx

    # ---------------------------------------------------------- dense and loss
    def linear_forward(self, x, w, b):
        self.check_linear(x, w, b)  # the kernel would read past bad shapes
        (n_in, n), (n_out, _) = x.shape, w.shape
        x, w, *bias = self._operands(x, w, *(() if b is None else (b,)))
        y = self._gemm(w, x, bias[0] if bias else None, n_out, n, n_in,
                       trans_a=False, trans_b=False)
        return y, (x, w, b is not None)

    def linear_backward(self, dy, ctx, need_dx: bool = True):
        x, w, has_bias = ctx
        dy = self._operands(dy, x)[0]
        (n_in, n), (n_out, _) = x.shape, w.shape
        dw = self._gemm(dy, x, None, n_out, n_in, n, trans_a=False, trans_b=True)
        db = self._row_sum(dy) if has_bias else None
        dx = self._gemm(w, dy, None, n_in, n, n_out, trans_a=True, trans_b=False) \
            if need_dx else None
        return dx, dw, db

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
        return per_sample.mean(), grad

    def adam_update(self, p, g, m, v, *, lr: float, beta1: float, beta2: float,
                    eps: float, weight_decay: float, step: int) -> None:
        self.check_adam(p, g, m, v)
        g = cupy.ascontiguousarray(g)  # the kernel ignores strides
        decay = 1.0 - lr * weight_decay if weight_decay else 1.0
        self._launch("adam", "adam_update", p.dtype, p.size,
                     (p, g, m, v, np.int64(p.size), np.float64(beta1), np.float64(beta2),
                      np.float64(eps), np.float64(decay),
                      np.float64(lr / (1.0 - beta1 ** step)), np.float64(1.0 - beta2 ** step)))

    # ------------------------------------------------------------ graph capture
    def capture_step(self, step):
        if cupy.cuda.runtime.is_hip:  # CuPy has no graph capture on ROCm
            return step
        return _CapturedStep(step)


class _CapturedStep:
    """``step(*inputs)`` recorded once per input signature in a CUDA graph, then replayed.

    For each new (shape, dtype) signature of the inputs: the first call runs ``step``
    normally (CuPy compiles its own kernels, and the memory pool fills with the blocks
    the capture will reuse); the second call records it on a side stream into a graph,
    with static copies of the inputs; every call from then on copies its inputs into
    those static arrays and replays the graph, returning the outputs recorded at
    capture time (overwritten by the next call, so a caller keeps a copy of what it
    keeps).

    Everything the step allocates comes from a private memory pool, so no array made
    outside the step can be handed a block the graph writes on replay; the graph's
    outputs stay referenced here, so their blocks are never handed out again.
    """

    def __init__(self, step):
        self.step = step
        self.pool = cupy.cuda.MemoryPool()
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.seen: set = set()
        self.graphs: dict = {}

    def __call__(self, *inputs):
        key = tuple((a.shape, a.dtype.str) for a in inputs)
        if key not in self.graphs:
            if key not in self.seen:
                self.seen.add(key)
                with cupy.cuda.using_allocator(self.pool.malloc):
                    return self.step(*inputs)
            self.graphs[key] = self._capture(inputs)
        static_inputs, graph, outputs = self.graphs[key]
        for static, new in zip(static_inputs, inputs):
            static[...] = new
        graph.launch(cupy.cuda.get_current_stream())
        return outputs

    def _capture(self, inputs):
        with cupy.cuda.using_allocator(self.pool.malloc):
            static_inputs = [cupy.empty_like(a) for a in inputs]
            with self.stream:
                self.stream.begin_capture()
                try:
                    outputs = self.step(*static_inputs)
                finally:
                    graph = self.stream.end_capture()
        return static_inputs, graph, outputs
