"""The backend interface: every kernel a layer may call, with its shapes and maths.

Layout
------
Activations keep the batch innermost. A feature map is ``(C, H, W, N)`` and a feature
vector batch is ``(F, N)``, C-contiguous. With the batch innermost every slice an
im2col copies is a long contiguous run, a convolution is one GEMM whose output is
already in the next layer's layout, flattening before the fully connected layers is a
free reshape, and CPU loops vectorize over images (docs/performance.md, Layout).
Weights keep the conventional PyTorch shapes: conv ``(K, C, KH, KW)``, linear
``(OUT, IN)``. ``to_batch_last`` / ``from_batch_last`` convert NCHW arrays at the edges.

:class:`Backend` holds the abstract kernels, each with its formula, and the argument
checks every backend runs first. :class:`~fastlenet.backends.reference.ReferenceBackend`
computes every kernel with plain array maths: the reference the other backends are
tested against, and what they inherit for the kernels they do not write themselves.

``ctx`` values returned by a forward kernel are opaque to callers: they hold whatever
that backend's backward needs and are passed back unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import ArrayError

Array = Any  # numpy.ndarray or cupy.ndarray, as the backend's ``xp`` makes them

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # what every kernel takes


def window_out_size(size: int, window: int, stride: int, pad: int = 0) -> int:
    """Output length of a ``window`` sliding with ``stride`` over ``size`` values padded by
    ``pad`` on each side; ArrayError when no window fits. The one definition every
    backend's convolution and pooling and every layer's output shape use."""
    out = (size + 2 * pad - window) // stride + 1
    if out < 1:
        raise ArrayError(f"a {window}x{window} window with stride {stride} and padding {pad} "
                         f"does not fit an input of size {size}")
    return out


def _check_floats(op: str, **arrays) -> None:
    """Each named array (or None) must have the dimensions its layout names, e.g.
    ``x=(x, "(C, H, W, N)")``, and all must share one of FLOAT_DTYPES."""
    first = None  # (name, dtype) of the first array given
    for name, (a, layout) in arrays.items():
        if a is None:
            continue
        ndim = sum(1 for letter in layout.strip("()").split(",") if letter.strip())
        if a.ndim != ndim:
            raise ArrayError(f"{op}: {name} must be {ndim}-d {layout}, got shape {tuple(a.shape)}")
        if a.dtype not in FLOAT_DTYPES:
            raise ArrayError(f"{op}: {name} is {a.dtype}; the kernels take float32 or float64 "
                             "arrays (convert with .astype)")
        if first is None:
            first = name, a.dtype
        elif a.dtype != first[1]:
            raise ArrayError(f"{op}: {name} is {a.dtype} but {first[0]} is {first[1]}; convert "
                             "the arrays to one dtype")


def check_window_options(op: str, size_name: str, size, stride, pad) -> None:
    """ArrayError unless the window size and stride are integers >= 1 and the padding an
    integer >= 0, naming ``op`` and the option."""
    for name, value, low in ((size_name, size, 1), ("stride", stride, 1), ("pad", pad, 0)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ArrayError(f"{op}: {name} must be an integer >= {low}, got {value!r}")


class Backend(ABC):
    """Base class of the backends; one instance per backend, from the registry."""

    name: str = ""
    xp: ModuleType

    # ----------------------------------------------------------- device helpers
    def asarray(self, a, dtype=None) -> Array:
        """Copy or view ``a`` (any array-like) as an array on this backend's device."""
        return self.xp.asarray(a, dtype=dtype)

    @abstractmethod
    def to_numpy(self, a):
        """Return ``a`` as a ``numpy.ndarray`` on the host."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Block until queued device work is done (a no-op on CPU backends)."""

    def prepare(self, dtype) -> str | None:
        """Get every kernel ready to run on ``dtype`` arrays before a run starts.

        A compiling backend compiles (or loads its compiled kernels) here rather than in
        the first training step. Returns a line worth showing the user (for instance how
        long a first compile took), or None.
        """
        return None

    @abstractmethod
    def default_rng(self, seed: int):
        """A random generator living where this backend's arrays live.

        It must offer ``random(shape, dtype=...)`` with values in [0, 1) and
        ``standard_normal(shape, dtype=...)``, as ``numpy.random.Generator`` does, and
        expose its state through :meth:`rng_state` / :meth:`set_rng_state`.
        """
        raise NotImplementedError

    @abstractmethod
    def rng_state(self, rng) -> dict:
        """The generator's state as a JSON-serialisable dict."""
        raise NotImplementedError

    @abstractmethod
    def set_rng_state(self, rng, state: dict) -> None:
        raise NotImplementedError

    def capture_step(self, step: Callable[..., tuple],
                     signature: Callable[[], Hashable | None] = lambda: ()
                     ) -> Callable[..., tuple]:
        """A callable equivalent to ``step`` for repeated calls; by default ``step`` itself.

        ``step(*inputs)`` takes device arrays and returns a tuple of device arrays (or
        None entries). A GPU backend may record it once and replay the recording
        (a CUDA graph) on later calls with inputs of the same shapes and dtypes, so
        ``step`` must read every per-call value from its inputs or from device arrays
        (weights, running statistics, the generator's state, the optimizer's per-step
        scalars), never read device values on the host, and return everything the
        caller uses afterwards. Outputs may be overwritten by the next call: copy what is
        kept.

        ``signature()`` is called before every call: a hashable of every host value the
        step bakes into a recording (train or eval mode, dropout rates, the loss's label
        smoothing, the optimizer's constant hyper-parameters...). A recording is replayed
        only while the signature is the one it was made with; ``None`` means "run this
        call as plain Python" (the step holds host values that change from call to call).
        """
        return step

    def device_description(self) -> str | None:
        """The device this backend runs on, for ``fastlenet info`` (None for the CPU)."""
        return None

    def device_failure(self, exc: BaseException) -> tuple[str, str] | None:
        """``("memory", detail)`` when ``exc`` is the device running out of memory,
        ``("device", detail)`` when the device itself failed (lost, driver error), else
        None; ``detail`` is one line. The CPU backends' failures are ordinary errors."""
        return None

    def set_scalars(self, out: Array, values) -> None:
        """Write the host numbers ``values`` into the 1-D device array ``out`` (same length,
        at most 4), queued behind earlier device work without waiting for it.

        How an optimizer hands its per-step scalars (the learning rate, Adam's bias
        corrections) to a recorded step, which reads them from ``out``.
        """
        out[...] = values

    @abstractmethod
    def to_batch_last(self, x_nchw: Array, index: Array | None = None) -> Array:
        """``(N, C, H, W)`` -> contiguous ``(C, H, W, N)``; ``(N, F)`` -> ``(F, N)``. With
        ``index`` (a 1-d integer array on the device), the samples ``x_nchw[index]``, in
        that order: a training batch gathered from the training set, which a backend may
        read in place instead of copying it out first. Negative indices count from the end;
        an index past the end raises IndexError on the host backends and is not checked on
        cupy (CuPy wraps it around; checking would read the index back to the host in every
        training step)."""
        raise NotImplementedError

    def gather_batch(self, x: Array, y: Array, index: Array) -> tuple[Array, Array]:
        """A training batch, ``(to_batch_last(x, index), y[index])``, which a backend may
        gather in one pass."""
        return self.to_batch_last(x, index), y[index]

    @abstractmethod
    def from_batch_last(self, x: Array) -> Array:
        """Inverse of :meth:`to_batch_last` (without the gather)."""
        raise NotImplementedError

    # ----------------------------------------------------------- argument checks
    # Every backend calls these at the top of its kernels, so a bad call gets the same
    # one-line ArrayError on every backend, before anything runs (a CUDA kernel would
    # read past the end of an array; NumPy would broadcast or upcast silently). They
    # read shapes and dtypes only, never values, so they cost no device round trip.
    def check_conv2d(self, x, w, b, stride: int, pad: int) -> tuple[int, int]:
        """(OH, OW) of ``conv2d_forward(x, w, b, stride, pad)``; ArrayError when x is not
        (C, H, W, N), w not (K, C, KH, KW), b not (K,) or None, the dtypes differ, the
        channels differ or the window does not fit."""
        _check_floats("conv2d", x=(x, "(C, H, W, N)"), w=(w, "(K, C, KH, KW)"), b=(b, "(K,)"))
        C, H, W, _ = x.shape
        K, WC, KH, KW = w.shape
        check_window_options("conv2d", "kernel height", KH, stride, pad)
        check_window_options("conv2d", "kernel width", KW, stride, pad)
        if WC != C:
            raise ArrayError(f"conv2d: input has {C} channels, weights expect {WC}")
        if b is not None and tuple(b.shape) != (K,):
            raise ArrayError(f"conv2d: bias has shape {tuple(b.shape)}, expected ({K},)")
        return window_out_size(H, KH, stride, pad), window_out_size(W, KW, stride, pad)

    def check_pool2d(self, x, size: int, stride: int) -> tuple[int, int]:
        """(OH, OW) of pooling x (C, H, W, N) with ``size x size`` windows; ArrayError
        when x is not a float (C, H, W, N) array or the window does not fit."""
        _check_floats("pool2d", x=(x, "(C, H, W, N)"))
        check_window_options("pool2d", "size", size, stride, 0)
        _, H, W, _ = x.shape
        return window_out_size(H, size, stride), window_out_size(W, size, stride)

    def check_linear(self, x, w, b) -> None:
        """ArrayError unless x is (IN, N), w (OUT, IN) and b (OUT,) or None, one dtype."""
        _check_floats("linear", x=(x, "(IN, N)"), w=(w, "(OUT, IN)"), b=(b, "(OUT,)"))
        (IN, _), (OUT, WIN) = x.shape, w.shape
        if WIN != IN:
            raise ArrayError(f"linear: input has {IN} features, weights expect {WIN}")
        if b is not None and tuple(b.shape) != (OUT,):
            raise ArrayError(f"linear: bias has shape {tuple(b.shape)}, expected ({OUT},)")

    def check_dense_chain(self, x, weights, biases) -> None:
        """ArrayError unless weights and biases are lists of one length >= 1 and each layer
        passes check_linear on the previous layer's output width, all of one dtype."""
        if len(weights) < 1 or len(biases) != len(weights):
            raise ArrayError(f"dense_chain: {len(weights)} weight matrices and {len(biases)} "
                             "biases; give one bias (or None) per weight matrix, at least one")
        _check_floats("dense_chain", x=(x, "(IN, N)"),
                      **{f"w{i}": (w, "(OUT, IN)") for i, w in enumerate(weights)},
                      **{f"b{i}": (b, "(OUT,)") for i, b in enumerate(biases)})
        width = x.shape[0]
        for i, (w, b) in enumerate(zip(weights, biases)):
            if w.shape[1] != width:
                raise ArrayError(f"dense_chain: layer {i} gets {width} features, its weights "
                                 f"expect {w.shape[1]}")
            if b is not None and tuple(b.shape) != (w.shape[0],):
                raise ArrayError(f"dense_chain: layer {i}'s bias has shape {tuple(b.shape)}, "
                                 f"expected ({w.shape[0]},)")
            width = w.shape[0]

    def check_batchnorm(self, x, gamma, beta, running_mean, running_var) -> None:
        """ArrayError unless x is (C, M) and gamma, beta and the running estimates (C,),
        all of one float dtype."""
        _check_floats("batchnorm", x=(x, "(C, M)"), gamma=(gamma, "(C,)"), beta=(beta, "(C,)"),
                      running_mean=(running_mean, "(C,)"), running_var=(running_var, "(C,)"))
        C = x.shape[0]
        for name, a in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                        ("running_var", running_var)):
            if a.shape[0] != C:
                raise ArrayError(f"batchnorm: {name} has {a.shape[0]} values, x has {C} "
                                 "channels (rows)")

    def check_loss(self, logits, labels) -> None:
        """ArrayError unless logits is (K, N) float and labels (N,) integer. (The label
        values are not read here: that would wait for the device.)"""
        _check_floats("softmax_cross_entropy", logits=(logits, "(K, N)"))
        K, N = logits.shape
        if K < 1:
            raise ArrayError("softmax_cross_entropy: logits have no classes (K = 0); "
                             "the last layer needs at least one output")
        if tuple(labels.shape) != (N,) or labels.dtype.kind not in "iu":
            raise ArrayError(f"softmax_cross_entropy: labels must be ({N},) integers for "
                             f"{N} columns of logits, got {labels.dtype}{list(labels.shape)}")

    def check_count(self, logits, labels, correct) -> None:
        """ArrayError unless count_correct's logits and labels pass check_loss and correct
        is a 0-d int64 array."""
        self.check_loss(logits, labels)
        if correct.shape != () or correct.dtype != np.int64:
            raise ArrayError(f"count_correct: the count must be a 0-d int64 array, got "
                             f"{correct.dtype}{list(correct.shape)}")

    def check_warp(self, x, coeffs, displacement) -> None:
        """ArrayError unless x is (C, H, W, N), coeffs (6, N) and displacement
        (2, H, W, N) or None, all of one float dtype."""
        _check_floats("warp_bilinear", x=(x, "(C, H, W, N)"), coeffs=(coeffs, "(6, N)"),
                      displacement=(displacement, "(2, H, W, N)"))
        _, H, W, N = x.shape
        if tuple(coeffs.shape) != (6, N):
            raise ArrayError(f"warp_bilinear: coeffs has shape {tuple(coeffs.shape)}, "
                             f"expected (6, {N})")
        if displacement is not None and tuple(displacement.shape) != (2, H, W, N):
            raise ArrayError(f"warp_bilinear: displacement has shape "
                             f"{tuple(displacement.shape)}, expected (2, {H}, {W}, {N})")

    def check_separable_filter(self, a, gh, gw) -> None:
        """ArrayError unless a is (F, H, W, N), gh (H, H) and gw (W, W), one dtype."""
        _check_floats("separable_filter", a=(a, "(F, H, W, N)"), gh=(gh, "(H, H)"),
                      gw=(gw, "(W, W)"))
        _, H, W, _ = a.shape
        if tuple(gh.shape) != (H, H) or tuple(gw.shape) != (W, W):
            raise ArrayError(f"separable_filter: filters of shape {tuple(gh.shape)} and "
                             f"{tuple(gw.shape)} do not fit maps of {H}x{W}")

    def check_adam(self, p, g, m, v) -> None:
        """ArrayError unless g, m, v have p's shape and dtype, and p, m, v (updated in
        place) are C-contiguous: a flattened copy would be updated instead."""
        for name, a in (("gradient", g), ("exp_avg", m), ("exp_avg_sq", v)):
            if a.dtype != p.dtype or a.shape != p.shape:
                raise ArrayError(f"adam_update: the {name} is {a.dtype}{list(a.shape)}, the "
                                 f"parameter {p.dtype}{list(p.shape)}; they must match")
        for name, a in (("parameter", p), ("exp_avg", m), ("exp_avg_sq", v)):
            if not a.flags.c_contiguous:
                raise ArrayError(f"adam_update: the {name} must be C-contiguous (it is "
                                 "updated in place)")

    # --------------------------------------------------------------- convolution
    @abstractmethod
    def conv2d_forward(self, x, w, b, stride: int, pad: int):
        """Cross-correlation, as in PyTorch's Conv2d.

        x: (C, H, W, N); w: (K, C, KH, KW); b: (K,) or None.
        Returns ``(y, ctx)`` with y: (K, OH, OW, N),
        OH = (H + 2*pad - KH) // stride + 1, OW likewise.
        y[k, i, j, n] = b[k] + sum_{c,p,q} w[k, c, p, q] * xpad[c, i*stride+p, j*stride+q, n]
        """
        raise NotImplementedError

    @abstractmethod
    def conv2d_backward(self, dy, ctx, need_dx: bool = True):
        """Gradients of the convolution from ``dy``: (K, OH, OW, N).

        Returns ``(dx, dw, db)``: dx (C, H, W, N) or None when ``need_dx`` is false
        (the first layer), dw (K, C, KH, KW), db (K,) or None when there was no bias.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------- pooling
    @abstractmethod
    def maxpool2d_forward(self, x, size: int, stride: int):
        """Max over ``size x size`` windows; x: (C, H, W, N) -> y: (C, OH, OW, N).

        OH = (H - size) // stride + 1. The backward sends each window's gradient to one
        position: the first maximum in row-major window order, as PyTorch does (a mask
        ``x == max`` would send it to every tie, and ReLU makes many ties at 0). A NaN
        counts as the maximum, so it reaches the loss.
        """
        raise NotImplementedError

    @abstractmethod
    def maxpool2d_backward(self, dy, ctx):
        """dy: (C, OH, OW, N) -> dx: (C, H, W, N); overlapping windows accumulate."""
        raise NotImplementedError

    @abstractmethod
    def relu_maxpool2d_forward(self, x, size: int, stride: int):
        """``maxpool(relu(x))``; x: (C, H, W, N) -> y: (C, OH, OW, N). The two commute,
        so a backend may pool first and apply the ReLU to a quarter of the values."""
        raise NotImplementedError

    @abstractmethod
    def relu_maxpool2d_backward(self, dy, ctx):
        """dy: (C, OH, OW, N) -> dx: (C, H, W, N); zero where the pooled max was <= 0."""
        raise NotImplementedError

    @abstractmethod
    def conv2d_relu_maxpool2d_forward(self, x, w, b, stride: int, pad: int, size: int,
                                      pool_stride: int):
        """``maxpool(relu(conv2d(x)))`` (LeNet-5's conv blocks) as one call, so a backend
        may compute it without storing the convolution's output.

        x: (C, H, W, N), w: (K, C, KH, KW), b: (K,) or None -> y: (K, PH, PW, N), the
        max-pool of ``size x size`` windows with ``pool_stride`` over the (K, OH, OW, N)
        convolution output.
        """
        raise NotImplementedError

    @abstractmethod
    def conv2d_relu_maxpool2d_backward(self, dy, ctx, need_dx: bool = True):
        """dy: (K, PH, PW, N) -> (dx or None, dw, db or None), as conv2d_backward."""
        raise NotImplementedError

    @abstractmethod
    def avgpool2d_forward(self, x, size: int, stride: int):
        """Mean over ``size x size`` windows; x: (C, H, W, N) -> y: (C, OH, OW, N)."""
        raise NotImplementedError

    @abstractmethod
    def avgpool2d_backward(self, dy, ctx):
        """dy: (C, OH, OW, N) -> dx: (C, H, W, N); each window gets dy / size**2."""
        raise NotImplementedError

    # --------------------------------------------------------------- activation
    @abstractmethod
    def tanh_forward(self, x):
        """y = tanh(x) element-wise, any shape; returns ``(y, ctx)``."""
        raise NotImplementedError

    @abstractmethod
    def tanh_backward(self, dy, ctx):
        """dx = dy * (1 - y^2), y the forward's output."""
        raise NotImplementedError

    # ----------------------------------------------------------------- dropout
    def dropout_forward(self, x, p: float, rng):
        """Inverted dropout in training: y = x * keep / (1 - p), keep = u >= p for
        uniforms u = rng.random(x.shape, dtype=x.dtype) (0 <= p < 1); ``(y, ctx)``. By
        default NumPy-style array maths on the mask; a backend may apply it in one pass,
        bit for bit alike (a NaN in x stays NaN where it is dropped too)."""
        keep = rng.random(x.shape, dtype=x.dtype) >= p
        mask = keep.astype(x.dtype)
        mask *= 1.0 / (1.0 - p)
        return x * mask, mask

    def dropout_backward(self, dy, ctx):
        """dx = dy * keep / (1 - p), the forward's mask."""
        return dy * ctx

    # ------------------------------------------------------------ normalisation
    @abstractmethod
    def batchnorm_forward(self, x, gamma, beta, running_mean, running_var, *, training: bool,
                          momentum: float, eps: float):
        """Batch normalisation of every row (channel) of x: (C, M) -> ``(y (C, M), ctx)``.

        A (C, H, W, N) map or (F, N) batch is passed as its (C, M) view. Training: mean
        and biased var of the row's M >= 2 values, and in place
        running = (1 - momentum) running + momentum stat (var unbiased, times M / (M-1)).
        Eval: the running estimates instead, nothing updated.
        y = gamma * (x - mean) / sqrt(var + eps) + beta.
        """
        raise NotImplementedError

    @abstractmethod
    def batchnorm_backward(self, dy, ctx, need_dx: bool = True):
        """dy (C, M) -> ``(dx (C, M) or None, dgamma (C,), dbeta (C,))``, xhat the normalised x:
        dbeta = sum dy, dgamma = sum dy * xhat; training, where mean and var depend on
        every x of the row: dx = gamma / sqrt(var + eps) * (dy - dbeta / M - xhat dgamma / M);
        eval: dx = gamma / sqrt(var + eps) * dy.
        """
        raise NotImplementedError

    @abstractmethod
    def batchnorm_relu_maxpool2d_forward(self, x, gamma, beta, running_mean, running_var,
                                         size: int, stride: int, *, training: bool,
                                         momentum: float, eps: float):
        """``maxpool(relu(batchnorm(x)))`` as one call, so a backend may pool without
        storing the normalised map. x: (C, H, W, N), statistics over (H, W, N) per
        channel -> ``(y (C, OH, OW, N), ctx)``; the batch norm as batchnorm_forward, the
        pooling as relu_maxpool2d_forward."""
        raise NotImplementedError

    @abstractmethod
    def batchnorm_relu_maxpool2d_backward(self, dy, ctx, need_dx: bool = True):
        """dy: (C, OH, OW, N) -> ``(dx (C, H, W, N) or None, dgamma, dbeta)``."""
        raise NotImplementedError

    # ------------------------------------------------------------------- dense
    @abstractmethod
    def linear_forward(self, x, w, b):
        """y = w @ x + b[:, None]; x: (IN, N), w: (OUT, IN), b: (OUT,) or None -> (OUT, N)."""
        raise NotImplementedError

    @abstractmethod
    def linear_backward(self, dy, ctx, need_dx: bool = True):
        """dy: (OUT, N) -> (dx = w.T @ dy (IN, N) or None, dw = dy @ x.T, db = sum_n dy or None)."""
        raise NotImplementedError

    # ------------------------------------------------------ fully connected chain
    def fuses_dense_chain(self) -> bool:
        """Whether Sequential should run each Linear, ReLU, Linear, ..., Linear chain as one
        dense_chain step here: True where the backend has its own kernels for it."""
        return False

    def dense_chain_forward(self, x, weights, biases):
        """Linear layers with a ReLU between each two, as one call: a = x, then for each
        layer l, z = weights[l] @ a + biases[l][:, None] and a = max(z, 0) but after the last.

        x: (IN, N); weights[l]: (OUT_l, IN_l) with IN_0 = IN, IN_{l+1} = OUT_l; biases[l]:
        (OUT_l,) or None. Returns ``(y (OUT_last, N), ctx)``. By default linear_forward and
        the ReLU layer's maths in turn, so the results are those of the layers one by one.
        """
        self.check_dense_chain(x, weights, biases)
        xp = self.xp
        ctxs, masks = [], []
        for i, (w, b) in enumerate(zip(weights, biases)):
            if i:
                masks.append(x > 0)
                x = xp.maximum(x, 0)
            x, ctx = self.linear_forward(x, w, b)
            ctxs.append(ctx)
        return x, (ctxs, masks)

    def dense_chain_backward(self, dy, ctx, need_dx: bool = True):
        """dy: (OUT_last, N) -> ``(dx (IN, N) or None, [dw_l], [db_l or None])``, each as
        linear_backward's, the ReLUs' masks applied between."""
        ctxs, masks = ctx
        dws, dbs = [None] * len(ctxs), [None] * len(ctxs)
        for i in reversed(range(len(ctxs))):
            dy, dws[i], dbs[i] = self.linear_backward(dy, ctxs[i], need_dx=need_dx or i > 0)
            if i:
                dy = dy * masks[i - 1]
        return dy, dws, dbs

    # -------------------------------------------------------------------- loss
    @abstractmethod
    def softmax(self, logits):
        """Class probabilities, column by column; logits (K, N) -> (K, N).

        softmax_k(z) = exp(z_k - max z) / sum_j exp(z_j - max z): the shift keeps exp
        finite and cancels in the ratio.
        """
        raise NotImplementedError

    @abstractmethod
    def softmax_cross_entropy(self, logits, labels, label_smoothing: float = 0.0):
        """Mean softmax cross-entropy over the batch and its gradient.

        logits: (K, N) float; labels: (N,) integer classes in [0, K).
        With smoothing s the target is q = (1 - s) * onehot + s / K.
        loss = mean_n [ logsumexp_k(z[:, n]) - sum_k q[k, n] z[k, n] ], computed from
        z - max z, so it stays finite for |z| up to 1e4 and more.
        dlogits = (softmax(z) - q) / N.
        Returns ``(loss, dlogits)``: loss is a 0-d array on the device (no host sync).
        """
        raise NotImplementedError

    @abstractmethod
    def count_correct(self, logits, labels, correct) -> None:
        """Add to ``correct`` (a 0-d int64 array on the device) how many columns of logits
        (K, N) have their largest value in the row of their label (N,): argmax's choice,
        the first of ties, a NaN before any number. Reads nothing back to the host."""
        raise NotImplementedError

    # ------------------------------------------------------------ augmentation
    @abstractmethod
    def separable_filter(self, a, gh, gw):
        """Every map of a (F, H, W, N) filtered along H by gh (H, H) and along W by gw
        (W, W): out[f, :, :, n] = gh @ a[f, :, :, n] @ gw.T. Returns a new array (the
        augmenter smooths its elastic displacement fields with banded Gaussian gh, gw)."""
        raise NotImplementedError

    @abstractmethod
    def warp_bilinear(self, x, coeffs, displacement, background: float):
        """Every image of x (C, H, W, N) resampled at its own source points, bilinearly;
        points outside the image read ``background``. Returns a new (C, H, W, N) array.

        Output pixel (row i, column j) of image n reads the input at
            sx = coeffs[0, n] j + coeffs[1, n] i + coeffs[2, n] + displacement[0, i, j, n]
            sy = coeffs[3, n] j + coeffs[4, n] i + coeffs[5, n] + displacement[1, i, j, n]
        (coeffs (6, N): an affine map per image; displacement (2, H, W, N) or None).
        """
        raise NotImplementedError

    # --------------------------------------------------------------- optimizer
    def adam_update(self, p, g, m, v, *, lr: float, beta1: float, beta2: float,
                    eps: float, weight_decay: float, step: int) -> None:
        """One AdamW step, in place on p, m, v (all the same shape and dtype).

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        p -= lr * wd * p                                  (decoupled weight decay)
        p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

        The host computes the step's factors (:func:`adam_factors`) and
        :meth:`adam_update_device` applies them.
        """
        factors = self.asarray(adam_factors(lr, beta1, beta2, weight_decay, step), dtype=p.dtype)
        self.adam_update_device(p, g, m, v, factors, beta1=beta1, beta2=beta2, eps=eps,
                                weight_decay=weight_decay)

    @abstractmethod
    def adam_update_device(self, p, g, m, v, factors, *, beta1: float, beta2: float,
                           eps: float, weight_decay: float) -> None:
        """:meth:`adam_update` with the per-step values read from the device array
        ``factors`` = (decay, step_size, bias2) of :func:`adam_factors`, in p's dtype.

        Nothing here depends on the step or the learning rate, so a recorded step
        replays it unchanged while the host writes new factors before each replay.
        ``weight_decay`` only says whether to apply the decay factor.
        """
        raise NotImplementedError


def adam_factors(lr: float, beta1: float, beta2: float, weight_decay: float,
                 step: int) -> tuple[float, float, float]:
    """The host scalars of AdamW update number ``step`` (from 1), in float64:
    decay = 1 - lr * wd, step_size = lr / (1 - b1^t), bias2 = 1 - b2^t.

    Stored in the parameters' dtype, each rounds once, as a Python float combined with
    a float32 array does in NumPy.
    """
    return 1.0 - lr * weight_decay, lr / (1.0 - beta1 ** step), 1.0 - beta2 ** step
