"""The Numba backend's launchers: argument checks, output arrays and the calls into the
kernels of conv2d.py, winograd.py, pool.py, batchnorm.py, activation.py, dense.py,
loss.py, adam.py, augment.py, layout.py and random.py (the generator).

Memory ownership is as in the reference: every array a kernel returns or keeps in a ctx
is freshly allocated, so a ctx stays valid until its backward. Three buffers are kept per
shape seen and never leave the call that uses them: the zero-margined copy of dy the
input gradient reads (a padded one on Winograd's path), and the field of zeros
warp_bilinear reads when an augmentation has no elastic displacement.

Threads: Numba's workers and BLAS's both spin while idle, and on a small machine the two
pools fight over the cores (docs/performance.md), so this backend calls no BLAS.
"""

from __future__ import annotations

import time

import numba
import numpy as np

from ... import tuning
from ...errors import ArrayError
from .. import philox
from ..base import check_window_options, window_out_size
from ..reference import ReferenceBackend
from . import (activation, adam, augment, batchnorm, conv2d, dense, jit, layout, loss, pool,
               random, winograd)


class NumbaBackend(ReferenceBackend):
    """NumPy arrays, Numba kernels. Every kernel of a training step is its own, except
    the conv block's backward, the reference's chain of this backend's max-pool and
    convolution backwards (and its forward where the convolution is strided or the
    windows overlap or leave gaps; the batch-norm block's both ways in that case);
    softmax (inference only) and from_batch_last are the reference's."""

    name = "numba"

    def __init__(self):
        self._prepared: set[str] = set()
        self._buffers: dict[tuple, np.ndarray] = {}
        self._gemm: tuning.Choice | None = None

    def _kept_padded(self, dy, top: int, left: int, rows: int, cols: int):
        """dy (K, OH, OW, N) with ``top`` rows and ``left`` columns of zeros before it and
        zeros after it up to rows x cols, in a buffer kept per shape (no fresh pages each
        call). The buffer never leaves the call that fills it (it is not kept in any
        ctx)."""
        K, _, _, N = dy.shape
        shape = (K, rows, cols, N)
        key = ("padded", shape, top, left, dy.dtype.str)
        if key not in self._buffers:
            self._buffers[key] = np.empty(shape, dtype=dy.dtype)
        out = self._buffers[key]
        layout.pad_into(np.ascontiguousarray(dy), top, left, out)
        return out

    def _widened(self, dy, margin: int):
        """dy with ``margin`` columns of zeros each side (the direct input gradient's)."""
        _, OH, OW, _ = dy.shape
        return self._kept_padded(dy, 0, margin, OH, OW + 2 * margin)

    @staticmethod
    def _row_width(cols: int, N: int, itemsize: int) -> int:
        """cols, or one more where rows of cols x N values would lie a multiple of 4 KB
        apart: the rows a kernel reads together would otherwise share L1's sets
        (docs/performance.md, numba backend, Convolution). No window reaches the extra
        column."""
        return cols + 1 if (cols * N * itemsize) % 4096 == 0 else cols

    def _padded(self, x, pad: int, rows: int = 0, cols: int = 0):
        """x (C, H, W, N) with ``pad`` rows and columns of zeros on each side, and more on
        the bottom and right up to ``rows`` x ``cols`` where asked (rows kept off 4 KB
        multiples: _row_width), written in one parallel pass into a new array (the
        convolution's ctx keeps it); x itself when that adds nothing, as the
        reference's."""
        C, H, W, N = x.shape
        HP, WP = max(H + 2 * pad, rows), max(W + 2 * pad, cols)
        if (HP, WP) == (H, W):
            return x
        xpad = np.empty((C, HP, self._row_width(WP, N, x.dtype.itemsize), N), dtype=x.dtype)
        layout.pad_into(np.ascontiguousarray(x), pad, pad, xpad)
        return xpad

    def default_rng(self, seed: int):
        """Philox4x32-10 drawn in parallel: the cupy backend's numbers for the same seed."""
        return random.PhiloxGenerator(seed)

    def rng_state(self, rng) -> dict:
        return philox.to_state(rng.key, rng.counter)

    def set_rng_state(self, rng, state: dict) -> None:
        """A checkpoint of an older version holds NumPy's PCG64 state; its run resumes with
        a Philox key derived from that state (deterministic, not the old stream)."""
        if isinstance(state, dict) and state.get("bit_generator") == "PCG64":
            old = np.random.PCG64()
            try:
                old.state = state
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ValueError(f"a damaged PCG64 generator state ({exc!r})") from None
            numbers = old.state["state"]
            rng.key, rng.counter = philox.seed_key([numbers["state"], numbers["inc"]]), 0
            return
        rng.key, rng.counter = philox.from_state(state, self.name)

    def prepare(self, dtype) -> str | None:
        """Compile (or load from Numba's disk cache) the kernels of a training step of any
        zoo model for ``dtype`` by running each once on a tiny input; the first call per
        dtype says so when it compiled. The rarer kernels (average pooling, strided
        convolutions) compile on first use."""
        dtype = np.dtype(dtype)
        if dtype.name in self._prepared:
            return None
        tick = time.perf_counter()
        misses_before = jit.cache_misses()
        self._exercise(dtype)
        self._prepared.add(dtype.name)
        notes = []
        if jit.cache_misses() != misses_before:
            notes.append(f"numba: compiled the {dtype.name} kernels in "
                         f"{time.perf_counter() - tick:.1f} s (first run only; later runs "
                         "load them from Numba's cache)")
        choice = self.gemm_choice()
        if choice.how.startswith("measured now"):
            times = ", ".join(f"{k} {v:.0f} us" for k, v in choice.times_us.items())
            notes.append(f"numba: chose {choice.variant} blocks for the linear layers' forward "
                         f"products on this CPU ({times}; {choice.how})")
        return "\n".join(notes) or None

    def gemm_choice(self) -> tuning.Choice:
        """The register blocking of the linear layers' forward products on this machine,
        measured once on LeNet-5's first linear layer at batch 128 (fastlenet.tuning)."""
        if self._gemm is None:
            rng = np.random.default_rng(0)
            w, xt = (rng.standard_normal(shape).astype(np.float32)
                     for shape in ((120, 400), (128, 400)))
            bias, y = np.zeros(120, np.float32), np.empty((120, 128), np.float32)

            def products(size):
                # fc1's forward, as _gemm_nt passes it (the gradients take gemm_rows)
                return lambda: dense.gemm_nt(w, xt, bias, y, size)

            self._gemm = tuning.choose(
                "numba.gemm_nt.forward",
                {name: products(size) for name, size in dense.BLOCKINGS.items()},
                default="4x4", threads=numba.get_num_threads())
        return self._gemm

    def _exercise(self, dtype) -> None:
        """One call of every kernel, with argument types the real calls use."""
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 6, 6, 3)).astype(dtype)
        w = rng.standard_normal((2, 2, 3, 3)).astype(dtype)
        self.to_batch_last(x)
        pooled, ctx = self.conv2d_relu_maxpool2d_forward(x, w, w[:, 0, 0, 0].copy(), 1, 1, 2, 2)
        self.conv2d_relu_maxpool2d_backward(pooled, ctx)
        # a convolution and a max-pool on their own: models with BatchNorm between them
        self.relu_maxpool2d_forward(self.conv2d_forward(x, w, None, 1, 1)[0], 2, 2)
        # Winograd's kernel directly (its thresholds keep tiny shapes off it); the forward
        # and the input gradient call it with these types
        winograd.conv2d(x[:1, :4, :4].copy(), w[:1, :1].copy(), np.zeros(1, dtype),
                        np.empty((1, 2, 2, 3), dtype), numba.get_num_threads())
        generator = self.default_rng(0)
        for values in (x, np.zeros(activation.SERIAL_BELOW, dtype)):  # serial, then parallel
            self.tanh_backward(*self.tanh_forward(values))
            y, ctx = self.dropout_forward(values, 0.5, generator)
            self.dropout_backward(y, ctx)
        stats = [np.ones(2, dtype), np.zeros(2, dtype), np.zeros(2, dtype), np.ones(2, dtype)]
        for training in (True, False):
            y, ctx = self.batchnorm_forward(x.reshape(2, -1), *stats, training=training,
                                            momentum=0.1, eps=1e-5)
            self.batchnorm_backward(y, ctx)
            y, ctx = self.batchnorm_relu_maxpool2d_forward(x, *stats, 2, 2, training=training,
                                                           momentum=0.1, eps=1e-5)
            self.batchnorm_relu_maxpool2d_backward(y, ctx)
        y, ctx = self.linear_forward(x.reshape(-1, 3), rng.standard_normal((5, 72)).astype(dtype),
                                     rng.standard_normal(5).astype(dtype))
        self.linear_backward(y, ctx)
        self._transposed(np.zeros((1 << 15, 1), dtype))  # the tiled copy of tall activations
        generator.random(3, dtype=dtype), generator.standard_normal(3, dtype=dtype)
        logits = rng.standard_normal((3, 4)).astype(dtype)
        self.softmax_cross_entropy(logits, np.arange(4) % 3, 0.1)
        p = rng.standard_normal(5).astype(dtype)
        self.adam_update(p, p.copy(), np.zeros_like(p), np.zeros_like(p), lr=1e-3, beta1=0.9,
                         beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)

    def to_batch_last(self, x_nchw, index=None):
        x = np.ascontiguousarray(x_nchw)
        M = x.shape[0]
        if index is None:
            index = np.arange(M)
        index = np.asarray(index)
        if index.ndim != 1 or index.dtype.kind not in "iu":
            raise ArrayError(f"to_batch_last: index must be a 1-d integer array, got "
                             f"{index.dtype} of shape {index.shape}")
        N = len(index)
        out = np.empty((x.size // max(M, 1), N), dtype=x.dtype)
        layout.batch_last(x.reshape(M, -1), index.astype(np.int64, copy=False), out)
        return out.reshape(*x.shape[1:], N)

    # --------------------------------------------------------------- convolution
    def _conv_operands(self, x, w, b, stride: int, pad: int, rows: int = 0, cols: int = 0):
        """A convolution's kernel operands: x padded (the reference's padding; at least
        rows x cols), all contiguous, and the bias (zeros when the layer has none); and
        the ctx conv2d_backward reads."""
        xpad = np.ascontiguousarray(self._padded(x, pad, rows, cols))
        w = np.ascontiguousarray(w)
        bias = np.ascontiguousarray(b) if b is not None else np.zeros(w.shape[0], dtype=x.dtype)
        return xpad, w, bias, (xpad, w, x.shape, stride, pad, b is not None)

    def conv2d_forward(self, x, w, b, stride: int, pad: int):
        OH, OW = self.check_conv2d(x, w, b, stride, pad)
        y = np.empty((w.shape[0], OH, OW, x.shape[3]), dtype=x.dtype)
        if winograd.applies(w, stride, OH, OW):
            xpad, w, bias, ctx = self._conv_operands(x, w, b, stride, pad,
                                                     winograd.padded_size(OH),
                                                     winograd.padded_size(OW))
            winograd.conv2d(xpad, w, bias, y, numba.get_num_threads())
            return y, ctx
        xpad, w, bias, ctx = self._conv_operands(x, w, b, stride, pad)
        if stride == 1:
            conv2d.conv2d_forward(xpad, w, bias, y)
        else:
            conv2d.conv2d_forward_strided(xpad, w, bias, stride, y)
        return y, ctx

    def conv2d_backward(self, dy, ctx, need_dx: bool = True):
        xpad, w, x_shape, stride, pad, has_bias = ctx
        dy = np.ascontiguousarray(dy)
        K, C, KH, KW = w.shape
        if dy.shape[1:3] == (1, 1) and not pad and x_shape[1:3] == (KH, KW) and C:
            # xpad is x, or x with zero rows and columns after it (winograd's blocks)
            return self._whole_window_backward(dy, xpad[:, :KH, :KW], w, has_bias, need_dx)
        dw = np.empty_like(w)
        db = np.empty(K if has_bias else 0, dtype=dy.dtype)
        if stride == 1:
            conv2d.conv2d_backward_weight(xpad, dy, dw, db)
        else:
            conv2d.conv2d_backward_weight_strided(xpad, dy, stride, dw, db)
        if C == 0 and has_bias:  # the kernels sum db in their channel-0 tasks: none here
            dense.row_sum(dy.reshape(K, -1), db)
        db = db if has_bias else None
        if not need_dx:
            return None, dw, db
        _, OH, OW, N = dy.shape
        if stride > 1:
            # the gradient of a strided convolution is that of a stride-1 one whose dy
            # is spread out with zeros between the outputs
            spread = np.zeros((K, (OH - 1) * stride + 1, (OW - 1) * stride + 1, N), dtype=dy.dtype)
            spread[:, ::stride, ::stride] = dy
            dy = spread
        _, H, W, _ = x_shape
        if pad <= KH - 1 and winograd.applies(w.transpose(1, 0, 2, 3), stride, H, W):
            # the input gradient is the forward convolution of dy, padded by KH-1-pad,
            # with w's channels swapped and its rows and columns reversed
            dx = np.empty(x_shape, dtype=dy.dtype)
            dy_padded = self._kept_padded(
                dy, KH - 1 - pad, KH - 1 - pad, winograd.padded_size(H),
                self._row_width(winograd.padded_size(W), dy.shape[3], dy.dtype.itemsize))
            w_turned = np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
            winograd.conv2d(dy_padded, w_turned, np.zeros(C, dtype=dy.dtype), dx,
                            numba.get_num_threads())
            return dx, dw, db
        dy_wide = self._widened(dy, KW - 1)
        w_flipped = np.ascontiguousarray(w[:, :, :, ::-1])
        # the padded input's rows and columns the windows reached; the rest (stride > 1
        # leftovers) get no gradient
        HC, WC = min(dy.shape[1] + KH - 1 - pad, H), min(dy.shape[2] + KW - 1 - pad, W)
        if HC == H and WC == W:  # every input position: computed in place
            dx = np.empty(x_shape, dtype=dy.dtype)
            conv2d.conv2d_backward_input(dy_wide, w_flipped, pad, pad, dx)
            return dx, dw, db
        dx = np.zeros(x_shape, dtype=dy.dtype)
        if HC > 0 and WC > 0:
            reached = np.empty((C, HC, WC, N), dtype=dy.dtype)
            conv2d.conv2d_backward_input(dy_wide, w_flipped, pad, pad, reached)
            dx[:, :HC, :WC] = reached
        return dx, dw, db

    def _whole_window_backward(self, dy, x, w, has_bias, need_dx):
        """The gradients of a convolution whose one window is its whole input (LeNet-5
        classic's C5: 16 x 5 x 5 -> 120 x 1 x 1), a linear layer over the flattened input:
        the linear layers' row updates, where the convolution kernels' tasks would each sum
        only the batch (docs/performance.md, Linear layers)."""
        K, N = w.shape[0], dy.shape[3]
        dy2, w2 = dy.reshape(K, N), np.ascontiguousarray(w).reshape(K, -1)
        dw = np.empty_like(w2)
        dense.gemm_rows(dy2, self._transposed(np.ascontiguousarray(x).reshape(-1, N)), dw)
        db = None
        if has_bias:
            db = np.empty(K, dtype=dy.dtype)
            dense.row_sum(dy2, db)
        dx = None
        if need_dx:
            dxt = np.empty((N, w2.shape[1]), dtype=dy.dtype)
            dense.gemm_rows(dy2.T, w2, dxt)
            dx = self._transposed(dxt).reshape(x.shape)
        return dx, dw.reshape(w.shape), db

    def conv2d_relu_maxpool2d_forward(self, x, w, b, stride: int, pad: int, size: int,
                                      pool_stride: int):
        OH, OW = self.check_conv2d(x, w, b, stride, pad)
        check_window_options("pool2d", "size", size, pool_stride, 0)
        if stride != 1 or pool_stride != size:  # overlapping or gapped windows: chained
            return super().conv2d_relu_maxpool2d_forward(x, w, b, stride, pad, size, pool_stride)
        K, N = w.shape[0], x.shape[3]
        PH, PW = window_out_size(OH, size, size), window_out_size(OW, size, size)
        xpad, w, bias, conv_ctx = self._conv_operands(x, w, b, stride, pad)
        y = np.empty((K, PH, PW, N), dtype=x.dtype)
        arg = np.empty((K, PH, PW, N), dtype=np.int32)
        conv2d.conv2d_relu_maxpool2d_forward(xpad, w, bias, size, y, arg)
        # the contexts conv2d_backward and maxpool2d_backward read, as the chain's
        return y, (conv_ctx, (arg, (K, OH, OW, N), size, size))

    # ------------------------------------------------------------------- pooling
    def _maxpool(self, x, size: int, stride: int, relu: bool):
        OH, OW = self.check_pool2d(x, size, stride)
        x = np.ascontiguousarray(x)
        C, _, _, N = x.shape
        y = np.empty((C, OH, OW, N), dtype=x.dtype)
        # int32 offsets, as wide as the float32 values they are selected with: with uint8
        # the selects do not vectorize
        arg = np.empty((C, OH, OW, N), dtype=np.int32)
        pool.maxpool2d_forward(x, size, stride, relu, y, arg)
        return y, (arg, x.shape, size, stride)

    def maxpool2d_forward(self, x, size: int, stride: int):
        return self._maxpool(x, size, stride, relu=False)

    def relu_maxpool2d_forward(self, x, size: int, stride: int):
        return self._maxpool(x, size, stride, relu=True)

    def maxpool2d_backward(self, dy, ctx):
        arg, x_shape, size, stride = ctx
        dy = np.ascontiguousarray(dy)
        dx = np.empty(x_shape, dtype=dy.dtype)
        _, H, W, _ = x_shape
        if stride == size and H == dy.shape[1] * size and W == dy.shape[2] * size:
            pool.maxpool2d_backward(dy, arg, size, dx)
        else:
            pool.maxpool2d_backward_general(dy, arg, size, stride, dx)
        return dx

    def relu_maxpool2d_backward(self, dy, ctx):
        return self.maxpool2d_backward(dy, ctx)

    def avgpool2d_forward(self, x, size: int, stride: int):
        OH, OW = self.check_pool2d(x, size, stride)
        x = np.ascontiguousarray(x)
        C, _, _, N = x.shape
        y = np.empty((C, OH, OW, N), dtype=x.dtype)
        pool.avgpool2d_forward(x, size, stride, y)
        return y, (x.shape, size, stride)

    def avgpool2d_backward(self, dy, ctx):
        x_shape, size, stride = ctx
        dx = np.empty(x_shape, dtype=dy.dtype)
        pool.avgpool2d_backward(np.ascontiguousarray(dy), size, stride, dx)
        return dx

    def separable_filter(self, a, gh, gw):
        self.check_separable_filter(a, gh, gw)
        a = np.ascontiguousarray(a)
        tmp, out = np.empty_like(a), np.empty_like(a)
        augment.separable_filter(a, np.ascontiguousarray(gh), np.ascontiguousarray(gw), tmp, out)
        return out

    def warp_bilinear(self, x, coeffs, displacement, background: float):
        self.check_warp(x, coeffs, displacement)
        C, H, W, N = x.shape
        if displacement is None:  # one kernel for both: a field of zeros, kept per shape
            key = ("no displacement", x.shape, x.dtype.str)
            if key not in self._buffers:
                self._buffers[key] = np.zeros((2, H, W, N), dtype=x.dtype)
            displacement = self._buffers[key]
        padded = np.empty((C, H + 2, W + 2, N), dtype=x.dtype)
        padded[:, 0], padded[:, -1], padded[:, 1:-1, 0], padded[:, 1:-1, -1] = (background,) * 4
        padded[:, 1:-1, 1:-1] = x
        out = np.empty(x.shape, dtype=x.dtype)
        augment.warp_bilinear(padded, np.ascontiguousarray(coeffs),
                              np.ascontiguousarray(displacement), out)
        return out

    def batchnorm_relu_maxpool2d_forward(self, x, gamma, beta, running_mean, running_var,
                                         size: int, stride: int, *, training: bool,
                                         momentum: float, eps: float):
        OH, OW = self.check_pool2d(x, size, stride)
        C, H, W, N = x.shape
        self.check_batchnorm(x.reshape(C, -1), gamma, beta, running_mean, running_var)
        if stride != size or H != OH * size or W != OW * size:  # windows that do not tile
            return super().batchnorm_relu_maxpool2d_forward(
                x, gamma, beta, running_mean, running_var, size, stride, training=training,
                momentum=momentum, eps=eps)
        x = np.ascontiguousarray(x)
        y = np.empty((C, OH, OW, N), dtype=x.dtype)
        arg = np.empty((C, OH, OW, N), dtype=np.int32)
        mean, inv_std = np.empty(C, dtype=x.dtype), np.empty(C, dtype=x.dtype)
        gamma = np.ascontiguousarray(gamma)
        rm = running_mean if running_mean.flags.c_contiguous else running_mean.copy()
        rv = running_var if running_var.flags.c_contiguous else running_var.copy()
        batchnorm.batchnorm_relu_maxpool2d_forward(
            x, gamma, np.ascontiguousarray(beta), rm, rv, bool(training), float(momentum),
            float(eps), size, mean, inv_std, y, arg)
        if training:
            running_mean[...], running_var[...] = rm, rv
        return y, ("fused", x, arg, mean, inv_std, gamma, bool(training))

    def batchnorm_relu_maxpool2d_backward(self, dy, ctx, need_dx: bool = True):
        if ctx[0] != "fused":
            return super().batchnorm_relu_maxpool2d_backward(dy, ctx, need_dx)
        _, x, arg, mean, inv_std, gamma, training = ctx
        C = x.shape[0]
        dx = np.empty_like(x) if need_dx else np.empty((0, 0, 0, 0), dtype=x.dtype)
        dgamma, dbeta = np.empty(C, dtype=x.dtype), np.empty(C, dtype=x.dtype)
        batchnorm.batchnorm_relu_maxpool2d_backward(
            x, np.ascontiguousarray(dy), arg, mean, inv_std, gamma, training, bool(need_dx), dx,
            dgamma, dbeta)
        return (dx if need_dx else None), dgamma, dbeta

    # --------------------------------------------------------------- activation
    def dropout_forward(self, x, p: float, rng):
        """The uniforms drawn in parallel (Philox) and the mask applied in one pass; the
        uniforms are the ctx, so no mask array is made."""
        if x.dtype not in (np.float32, np.float64):  # the reference's dtype rules
            return super().dropout_forward(x, p, rng)
        x = np.ascontiguousarray(x)
        t = x.dtype.type
        p_t, scale = t(p), t(1.0 / (1.0 - p))
        u = rng.random(x.shape, dtype=x.dtype)
        return self._dropout(x, u, p_t, scale), (u, p_t, scale)

    def dropout_backward(self, dy, ctx):
        u, p, scale = ctx
        if dy.dtype != u.dtype:
            return dy * ((u >= p).astype(u.dtype) * scale)
        return self._dropout(np.ascontiguousarray(dy), u, p, scale)

    @staticmethod
    def _dropout(x, u, p, scale):
        y = np.empty_like(x)
        small = x.size < activation.SERIAL_BELOW
        kernel = activation.dropout_serial if small else activation.dropout
        kernel(x.reshape(-1), u.reshape(-1), p, scale, y.reshape(-1))
        return y

    def tanh_forward(self, x):
        x = np.ascontiguousarray(x)
        if x.dtype not in (np.float32, np.float64):  # the reference's dtype rules
            return super().tanh_forward(x)
        y = np.empty_like(x)
        small = x.size < activation.SERIAL_BELOW
        if x.dtype == np.float32:
            kernel = activation.tanh_f32_serial if small else activation.tanh_f32
        else:
            kernel = activation.tanh_f64_serial if small else activation.tanh_f64
        kernel(x.reshape(-1), y.reshape(-1))
        return y, y

    def tanh_backward(self, dy, ctx):
        y = ctx
        if dy.dtype != y.dtype:
            return super().tanh_backward(dy, ctx)
        dy = np.ascontiguousarray(dy)
        dx = np.empty_like(dy)
        kernel = (activation.tanh_backward_serial if dy.size < activation.SERIAL_BELOW
                  else activation.tanh_backward)
        kernel(dy.reshape(-1), y.reshape(-1), dx.reshape(-1))
        return dx

    # ------------------------------------------------------------ normalisation
    def batchnorm_forward(self, x, gamma, beta, running_mean, running_var, *, training: bool,
                          momentum: float, eps: float):
        self.check_batchnorm(x, gamma, beta, running_mean, running_var)
        x = np.ascontiguousarray(x)
        C = x.shape[0]
        y = np.empty_like(x)
        mean, inv_std = np.empty(C, dtype=x.dtype), np.empty(C, dtype=x.dtype)
        # the running estimates are updated in place: a contiguous copy would be updated
        rm = running_mean if running_mean.flags.c_contiguous else running_mean.copy()
        rv = running_var if running_var.flags.c_contiguous else running_var.copy()
        batchnorm.batchnorm_forward(x, np.ascontiguousarray(gamma), np.ascontiguousarray(beta),
                                    rm, rv, bool(training), float(momentum), float(eps), y, mean,
                                    inv_std)
        if training:
            running_mean[...], running_var[...] = rm, rv
        return y, (x, mean, inv_std, np.ascontiguousarray(gamma), bool(training))

    def batchnorm_backward(self, dy, ctx, need_dx: bool = True):
        x, mean, inv_std, gamma, training = ctx
        dy = np.ascontiguousarray(dy)
        C = x.shape[0]
        dx = np.empty_like(dy) if need_dx else np.empty((0, 0), dtype=dy.dtype)
        dgamma, dbeta = np.empty(C, dtype=dy.dtype), np.empty(C, dtype=dy.dtype)
        batchnorm.batchnorm_backward(x, dy, mean, inv_std, gamma, training, bool(need_dx), dx,
                                     dgamma, dbeta)
        return (dx if need_dx else None), dgamma, dbeta

    # ------------------------------------------------------- linear, loss, Adam
    def _gemm_nt(self, a, b, bias=None):
        """a @ b.T (+ bias[:, None]) for a (R, K), b (S, K): a new (R, S) array."""
        out = np.empty((a.shape[0], b.shape[0]), dtype=a.dtype)
        bias = np.zeros(a.shape[0], a.dtype) if bias is None else np.ascontiguousarray(bias)
        dense.gemm_nt(dense.padded_rows(a), dense.padded_rows(b), bias, out,
                      dense.BLOCKINGS[self.gemm_choice().variant])
        return out

    @staticmethod
    def _transposed(a):
        """a.T as a C-contiguous array: the tiled parallel copy for large arrays, NumPy's
        copy for small ones and for wide ones under 65,536 values, where it is as fast
        (docs/performance.md, Linear layers)."""
        if a.ndim != 2 or a.T.flags.c_contiguous or a.size < 1 << 15 or (
                a.size < 1 << 16 and a.shape[0] < a.shape[1]):
            return np.ascontiguousarray(a.T)  # a view when a is a transposed array
        out = np.empty(a.shape[::-1], dtype=a.dtype)
        layout.transposed(np.ascontiguousarray(a), out)
        return out

    def linear_forward(self, x, w, b):
        self.check_linear(x, w, b)
        # x.T copied to rows: far fewer values than the product's multiply-adds; the
        # weight gradient reads it again
        xt = self._transposed(x)
        return self._gemm_nt(w, xt, b), (xt, w, b is not None)

    def linear_backward(self, dy, ctx, need_dx: bool = True):
        xt, w, has_bias = ctx
        dy = np.ascontiguousarray(dy)
        dw = np.empty(w.shape, dtype=dy.dtype)
        dense.gemm_rows(dy, xt, dw)  # dy (OUT, N) @ x.T (N, IN)
        db = None
        if has_bias:
            db = np.empty(dy.shape[0], dtype=dy.dtype)
            dense.row_sum(dy, db)
        if not need_dx:
            return None, dw, db
        # dx.T = dy.T (N, OUT) @ w (OUT, IN): rows as long as the layer's input
        dxt = np.empty((dy.shape[1], w.shape[1]), dtype=dy.dtype)
        dense.gemm_rows(dy.T, np.ascontiguousarray(w), dxt)
        return self._transposed(dxt), dw, db

    def softmax_cross_entropy(self, logits, labels, label_smoothing: float = 0.0):
        self.check_loss(logits, labels)
        logits = np.ascontiguousarray(logits)
        losses = np.empty(logits.shape[1], dtype=np.float64)
        grad = np.empty_like(logits)
        loss.softmax_cross_entropy(logits, np.ascontiguousarray(labels, dtype=np.int64),
                                   float(label_smoothing), losses, grad)
        return np.asarray(losses.mean(), dtype=logits.dtype), grad

    def adam_update_device(self, p, g, m, v, factors, *, beta1: float, beta2: float,
                           eps: float, weight_decay: float) -> None:
        self.check_adam(p, g, m, v)
        # The factors live in host memory here, so they are read and passed as scalars:
        # the reciprocal 1 / bias2 computed in the kernel made LLVM divide per element.
        # Constants in float64, then in the parameters' dtype, so float32 runs in float32
        # as the reference update does.
        f = p.dtype.type
        decay, step_size, bias2 = (float(x) for x in factors)
        adam.adam_update(p.reshape(-1), np.ascontiguousarray(g).reshape(-1), m.reshape(-1),
                         v.reshape(-1), f(beta1), f(1.0 - beta1), f(beta2), f(1.0 - beta2),
                         f(eps), f(decay if weight_decay else 1.0), f(step_size), f(1.0 / bias2))
