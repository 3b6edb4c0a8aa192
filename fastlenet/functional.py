"""fastlenet's kernels as plain functions on NCHW arrays, for hand-written networks.

For code that keeps its own weights and calls its own layers, as in a course assignment
with LeNet-5 written in NumPy: each op takes and returns arrays in the usual layouts
(feature maps ``(N, C, H, W)``, feature vectors ``(N, F)``, weights in PyTorch's shapes)
and runs on the backend named by ``backend`` ("numpy", "numba", "cupy" or "auto")::

    from fastlenet import functional as F

    y, ctx = F.conv2d(x, w, b, padding=0, backend="numba")   # x (N, C, H, W) -> y (N, K, OH, OW)
    ...
    dx, dw, db = F.conv2d_backward(dy, ctx)                  # dy shaped like y

Every forward returns ``(output, ctx)`` and its ``*_backward`` takes the output's
gradient and that ctx. The ctx holds the forward's inputs: leave them unchanged until the
backward (update weights after it, as an SGD step does).

Layout: the kernels keep the batch innermost, ``(C, H, W, N)`` (see
``fastlenet.backends.base``). An NCHW array entering an op is copied into that layout
once; what an op returns is an NCHW *view* of its batch-innermost result (its strides,
not its shape, differ from a fresh C-ordered array), so passing it on to the next op
costs no copy at all, and NumPy's element-wise functions keep its memory order. Call
``np.ascontiguousarray`` on a result if your code needs C order.

Arrays are float32 or float64, all of one dtype per call, and come back on the
backend's device (NumPy arrays for "numpy" and "numba", CuPy arrays for "cupy").

Threads: with "numba", limit BLAS to one thread while your network runs
(``threadpoolctl.threadpool_limits(1, "blas")`` or ``OPENBLAS_NUM_THREADS=1``). Idle
OpenBLAS threads left spinning by your own matrix products and Numba's workers fight
over the cores, and a step can run many times slower (docs/performance.md, Threads).

Wrong shapes, dtypes and layouts raise :class:`fastlenet.errors.ArrayError` (also a
ValueError and a TypeError) with one line naming the expected shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .backends import Backend, get_backend
from .backends.base import FLOAT_DTYPES, window_out_size
from .checks import is_integer, is_real
from .errors import ArrayError

@dataclass
class Context:
    """What a backward needs from its forward: the backend, the backend kernel's own
    ctx, and the output's shape and dtype (the gradient must match them)."""

    op: str
    backend: Backend
    kernel_ctx: Any
    out_shape: tuple[int, ...]
    dtype: np.dtype


# ------------------------------------------------------------------ checking
def _shape(a) -> tuple[int, ...]:
    return tuple(int(s) for s in a.shape)


def _array(op: str, name: str, a, backend: Backend, ndim: int, expected: str):
    """``a`` as an array on ``backend`` with ``ndim`` axes and a float dtype."""
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise ArrayError(f"{op}: {name} must be an array of shape {expected}, got a "
                         f"{type(a).__name__}")
    if a.ndim != ndim:
        raise ArrayError(f"{op}: {name} must have {ndim} axes {expected}, got shape {_shape(a)}")
    if np.dtype(a.dtype) not in FLOAT_DTYPES:
        raise ArrayError(f"{op}: {name} must be float32 or float64, got {a.dtype}; "
                         f"convert it with {name}.astype(np.float32)")
    return backend.asarray(a)


def _same_dtype(op: str, reference: str, dtype, **others) -> None:
    for name, a in others.items():
        if a is not None and a.dtype != dtype:
            raise ArrayError(f"{op}: {name} is {a.dtype} but {reference} is {np.dtype(dtype).name}; "
                             f"give every array one dtype, e.g. {name}.astype(np.{np.dtype(dtype).name})")


def _window(op: str, what: str, value, minimum: int) -> int:
    if not is_integer(value) or value < minimum:
        raise ArrayError(f"{op}: {what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _fits(op: str, H: int, W: int, window: int, stride: int, pad: int) -> tuple[int, int]:
    """(OH, OW) of a window sliding over H x W (the backends' window_out_size)."""
    try:
        return window_out_size(H, window, stride, pad), window_out_size(W, window, stride, pad)
    except ArrayError:
        raise ArrayError(f"{op}: a {window}x{window} window with stride {stride} and padding "
                         f"{pad} does not fit an input of {H}x{W}; the input must be at least "
                         f"{window - 2 * pad}x{window - 2 * pad}") from None


def _gradient(op: str, dy, ctx: Context):
    """Check ``dy`` against the forward's output and put it on the backend."""
    if not isinstance(ctx, Context) or ctx.op != op:
        raise ArrayError(f"{op}_backward: ctx must be what {op}() returned with its output, "
                         f"got {type(ctx).__name__}")
    if not hasattr(dy, "shape") or _shape(dy) != ctx.out_shape:
        got = _shape(dy) if hasattr(dy, "shape") else type(dy).__name__
        raise ArrayError(f"{op}_backward: the gradient must have the output's shape "
                         f"{ctx.out_shape}, got {got}")
    if dy.dtype != ctx.dtype:
        raise ArrayError(f"{op}_backward: the gradient is {dy.dtype} but the forward ran in "
                         f"{ctx.dtype.name}; pass it as {ctx.dtype.name}")
    return ctx.backend.asarray(dy)


# ------------------------------------------------------------------ layout
def _batch_last(backend: Backend, x):
    """(N, ...) -> contiguous (..., N): free when ``x`` is a view this module returned."""
    moved = backend.xp.moveaxis(x, 0, -1)
    return moved if moved.flags.c_contiguous else backend.to_batch_last(x)


def _batch_first(backend: Backend, y):
    """(..., N) -> an (N, ...) view of the same memory."""
    return backend.xp.moveaxis(y, -1, 0)


# ------------------------------------------------------------------ convolution
def conv2d(x, weight, bias=None, *, stride: int = 1, padding: int = 0, backend="auto"):
    """Cross-correlation, as PyTorch's ``conv2d``.

    x: (N, C, H, W); weight: (K, C, KH, KW); bias: (K,) or None.
    Returns ``(y, ctx)``, y: (N, K, OH, OW) with OH = (H + 2*padding - KH) // stride + 1.
    """
    op = "conv2d"
    backend = get_backend(backend)
    stride = _window(op, "stride", stride, 1)
    padding = _window(op, "padding", padding, 0)
    w = _array(op, "weight", weight, backend, 4, "(K, C, KH, KW)")
    k, c, kh, kw = _shape(w)
    x = _array(op, "x", x, backend, 4, f"(N, C={c}, H, W)")
    if x.shape[1] != c:
        hint = ("; it looks channels-last (N, H, W, C): pass x.transpose(0, 3, 1, 2)"
                if x.shape[3] == c else "")
        raise ArrayError(f"{op}: x has shape {_shape(x)}, expected (N, C={c}, H, W) (NCHW) "
                         f"for weight {_shape(w)}{hint}")
    if bias is not None:
        bias = _array(op, "bias", bias, backend, 1, f"(K={k},)")
        if bias.shape[0] != k:
            raise ArrayError(f"{op}: bias has shape {_shape(bias)}, expected ({k},), one "
                             "value per output channel")
    _same_dtype(op, "x", x.dtype, weight=w, bias=bias)
    if kh != kw:
        raise ArrayError(f"{op}: weight has shape {_shape(w)}; square kernels only (KH = KW)")
    oh, ow = _fits(op, x.shape[2], x.shape[3], kh, stride, padding)
    y, kernel_ctx = backend.conv2d_forward(_batch_last(backend, x), w, bias, stride, padding)
    out_shape = (x.shape[0], k, oh, ow)
    return _batch_first(backend, y), Context(op, backend, kernel_ctx, out_shape, x.dtype)


def conv2d_backward(dy, ctx: Context):
    """dy: (N, K, OH, OW) -> ``(dx (N, C, H, W), dweight (K, C, KH, KW), dbias (K,) or None)``."""
    dy = _gradient("conv2d", dy, ctx)
    backend = ctx.backend
    dx, dw, db = backend.conv2d_backward(_batch_last(backend, dy), ctx.kernel_ctx)
    return _batch_first(backend, dx), dw, db


# ------------------------------------------------------------------ pooling
def _pool_forward(op: str, kernel, x, size: int, stride, backend):
    backend = get_backend(backend)
    size = _window(op, "size", size, 1)
    stride = size if stride is None else _window(op, "stride", stride, 1)
    x = _array(op, "x", x, backend, 4, "(N, C, H, W)")
    oh, ow = _fits(op, x.shape[2], x.shape[3], size, stride, 0)
    y, kernel_ctx = getattr(backend, kernel)(_batch_last(backend, x), size, stride)
    out_shape = (x.shape[0], x.shape[1], oh, ow)
    return _batch_first(backend, y), Context(op, backend, kernel_ctx, out_shape, x.dtype)


def max_pool2d(x, size: int, *, stride: int | None = None, backend="auto"):
    """Max over ``size x size`` windows, ``stride`` defaulting to ``size``.

    x: (N, C, H, W) -> ``(y (N, C, OH, OW), ctx)``, OH = (H - size) // stride + 1. The
    backward sends each window's gradient to its first maximum, as PyTorch does.
    """
    return _pool_forward("max_pool2d", "maxpool2d_forward", x, size, stride, backend)


def _pool_backward(op: str, kernel, dy, ctx: Context):
    dy = _gradient(op, dy, ctx)
    dx = getattr(ctx.backend, kernel)(_batch_last(ctx.backend, dy), ctx.kernel_ctx)
    return _batch_first(ctx.backend, dx)


def max_pool2d_backward(dy, ctx: Context):
    """dy: (N, C, OH, OW) -> dx: (N, C, H, W)."""
    return _pool_backward("max_pool2d", "maxpool2d_backward", dy, ctx)


def avg_pool2d(x, size: int, *, stride: int | None = None, backend="auto"):
    """Mean over ``size x size`` windows; x: (N, C, H, W) -> ``(y (N, C, OH, OW), ctx)``."""
    return _pool_forward("avg_pool2d", "avgpool2d_forward", x, size, stride, backend)


def avg_pool2d_backward(dy, ctx: Context):
    """dy: (N, C, OH, OW) -> dx: (N, C, H, W)."""
    return _pool_backward("avg_pool2d", "avgpool2d_backward", dy, ctx)


# ------------------------------------------------------------------ dense
def linear(x, weight, bias=None, *, backend="auto"):
    """y = x @ weight.T + bias; x: (N, IN), weight: (OUT, IN), bias: (OUT,) or None.

    Returns ``(y (N, OUT), ctx)``. Flatten feature maps first: ``x.reshape(len(x), -1)``.
    """
    op = "linear"
    backend = get_backend(backend)
    w = _array(op, "weight", weight, backend, 2, "(OUT, IN)")
    out, inp = _shape(w)
    if not hasattr(x, "ndim") or x.ndim != 2 or x.shape[1] != inp:
        got = _shape(x) if hasattr(x, "shape") else type(x).__name__
        hint = "; flatten feature maps first: x.reshape(len(x), -1)" if getattr(x, "ndim", 2) > 2 else ""
        raise ArrayError(f"{op}: x has shape {got}, expected (N, IN={inp}) for weight "
                         f"{_shape(w)}{hint}")
    x = _array(op, "x", x, backend, 2, f"(N, IN={inp})")
    if bias is not None:
        bias = _array(op, "bias", bias, backend, 1, f"(OUT={out},)")
        if bias.shape[0] != out:
            raise ArrayError(f"{op}: bias has shape {_shape(bias)}, expected ({out},)")
    _same_dtype(op, "x", x.dtype, weight=w, bias=bias)
    # (N, IN).T is the backend's (IN, N) layout as a free view; GEMMs take either order
    y, kernel_ctx = backend.linear_forward(x.T, w, bias)
    return y.T, Context(op, backend, kernel_ctx, (x.shape[0], out), x.dtype)


def linear_backward(dy, ctx: Context):
    """dy: (N, OUT) -> ``(dx (N, IN), dweight (OUT, IN), dbias (OUT,) or None)``."""
    dy = _gradient("linear", dy, ctx)
    dx, dw, db = ctx.backend.linear_backward(dy.T, ctx.kernel_ctx)
    return dx.T, dw, db


# ------------------------------------------------------------------ activation, loss
def relu(x, *, backend="auto"):
    """y = max(x, 0), any shape; returns ``(y, ctx)``."""
    backend = get_backend(backend)
    if not hasattr(x, "ndim"):
        raise ArrayError(f"relu: x must be an array, got a {type(x).__name__}")
    x = _array("relu", "x", x, backend, x.ndim, "")
    mask = x > 0
    return backend.xp.maximum(x, 0), Context("relu", backend, mask, _shape(x), x.dtype)


def relu_backward(dy, ctx: Context):
    """dx = dy * [x > 0] (the subgradient 0 at x = 0, as PyTorch)."""
    return _gradient("relu", dy, ctx) * ctx.kernel_ctx


def softmax_cross_entropy(logits, labels, *, label_smoothing: float = 0.0, backend="auto"):
    """Mean softmax cross-entropy of logits (N, K) against integer labels (N,) in [0, K).

    Returns ``(loss, dlogits)``: the loss as a 0-d array and its gradient (N, K),
    (softmax(logits) - target) / N, computed in one pass (numerically stable for logits
    of any size). With ``label_smoothing`` s the target is (1 - s) * onehot + s / K.
    """
    op = "softmax_cross_entropy"
    backend = get_backend(backend)
    z = _array(op, "logits", logits, backend, 2, "(N, K)")
    n, k = _shape(z)
    labels_host = np.asarray(backend.to_numpy(labels) if hasattr(labels, "shape") else labels)
    if labels_host.shape != (n,) or labels_host.dtype.kind not in "iu":
        raise ArrayError(f"{op}: labels must be integers of shape ({n},), one class per "
                         f"row of logits {(n, k)}, got {labels_host.dtype} {labels_host.shape}")
    if n and (labels_host.min() < 0 or labels_host.max() >= k):
        raise ArrayError(f"{op}: labels must lie in [0, {k}) for {k} classes, got values "
                         f"from {labels_host.min()} to {labels_host.max()}")
    if not is_real(label_smoothing) or not 0.0 <= label_smoothing <= 1.0:
        raise ArrayError(f"{op}: label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    loss, grad = backend.softmax_cross_entropy(z.T, backend.asarray(labels_host.astype(np.int64)),
                                               float(label_smoothing))
    return loss, grad.T


__all__ = ["Context", "conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward",
           "avg_pool2d", "avg_pool2d_backward", "linear", "linear_backward", "relu",
           "relu_backward", "softmax_cross_entropy"]
