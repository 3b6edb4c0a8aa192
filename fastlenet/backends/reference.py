"""The reference backend: every kernel as plain array maths, on the host.

Each kernel is written the most direct way, against ``self.xp`` and in the batch-innermost
layout of ``base.py``: a convolution is im2col (one copy per kernel offset) and one GEMM,
pooling a loop over the window offsets, the rest whole-array NumPy. No loop runs over
pixels or images. This is the definition the other backends are tested against
(tests/test_kernels.py; the reference itself is held to naive loops in tests/naive.py),
and what they inherit for the kernels they do not write themselves: the NumPy backend
only replaces the convolution, the Numba backend nearly everything, and the CuPy backend
runs the array maths here on the GPU through ``xp = cupy``.

Memory ownership: every array a kernel returns or keeps in a ctx is allocated by that
call and never written again by the backend, so a ctx stays valid however many calls
run before its backward (a model runs all its forwards first). A ctx may also hold
arrays of the caller's (a linear layer's input and weights, a convolution's weights):
the caller must not change those in place before the backward, which the layers of
fastlenet.nn never do.
"""

from __future__ import annotations

import numpy as np

from .base import Array, Backend


def _strided(length: int, stride: int, count: int) -> slice:
    """The slice of ``count`` positions ``stride`` apart from ``length``: the window offset
    ``length`` taken in each of ``count`` windows."""
    return slice(length, length + stride * (count - 1) + 1, stride)


def _pool_views(x, size: int, stride: int, OH: int, OW: int) -> list:
    """The size*size views x[:, p::stride, q::stride] (C, OH, OW, N) cut to the OH x OW
    windows, in row-major (p, q) order: view t holds every window's element at offset t."""
    return [x[:, _strided(p, stride, OH), _strided(q, stride, OW)]
            for p in range(size) for q in range(size)]


class ReferenceBackend(Backend):
    """Plain array maths on NumPy arrays; a device backend replaces ``xp`` and the
    device helpers and keeps the maths it has no kernel for."""

    name = "reference"
    xp = np

    # ----------------------------------------------------------- device helpers
    def to_numpy(self, a):
        return np.asarray(a)

    def default_rng(self, seed: int):
        return np.random.default_rng(seed)

    def rng_state(self, rng) -> dict:
        return rng.bit_generator.state

    def set_rng_state(self, rng, state: dict) -> None:
        rng.bit_generator.state = state

    def to_batch_last(self, x_nchw: Array, index: Array | None = None) -> Array:
        xp = self.xp
        x = xp.asarray(x_nchw)
        if index is not None:
            x = x[index]
        return xp.ascontiguousarray(xp.moveaxis(x, 0, -1))

    def from_batch_last(self, x: Array) -> Array:
        xp = self.xp
        return xp.ascontiguousarray(xp.moveaxis(x, -1, 0))

    # --------------------------------------------------------------- convolution
    def conv2d_forward(self, x, w, b, stride: int, pad: int):
        OH, OW = self.check_conv2d(x, w, b, stride, pad)
        xp = self.xp
        C, H, W, N = x.shape
        K, _, KH, KW = w.shape
        xpad = self._padded(x, pad)
        # im2col: cols[c, p, q, i, j, n] = xpad[c, i*stride + p, j*stride + q, n]
        cols = xp.empty((C, KH, KW, OH, OW, N), dtype=x.dtype)
        for p in range(KH):
            for q in range(KW):
                cols[:, p, q] = xpad[:, _strided(p, stride, OH), _strided(q, stride, OW)]
        cols = cols.reshape(C * KH * KW, OH * OW * N)
        y = (w.reshape(K, C * KH * KW) @ cols).reshape(K, OH, OW, N)
        if b is not None:
            y += b.reshape(K, 1, 1, 1)
        return y, (cols, w, x.shape, stride, pad, b is not None)

    def conv2d_backward(self, dy, ctx, need_dx: bool = True):
        cols, w, x_shape, stride, pad, has_bias = ctx
        K, OH, OW, N = dy.shape
        dy2 = dy.reshape(K, OH * OW * N)
        dw = (dy2 @ cols.T).reshape(w.shape)
        db = dy2.sum(axis=1) if has_bias else None
        dx = self._conv2d_input_gradient(dy, w, x_shape, stride, pad) if need_dx else None
        return dx, dw, db

    def _padded(self, x, pad: int):
        """x (C, H, W, N) with ``pad`` rows and columns of zeros on each side."""
        if not pad:
            return x
        C, H, W, N = x.shape
        xpad = self.xp.zeros((C, H + 2 * pad, W + 2 * pad, N), dtype=x.dtype)
        xpad[:, pad:pad + H, pad:pad + W, :] = x
        return xpad

    def _conv2d_input_gradient(self, dy, w, x_shape, stride: int, pad: int):
        """dx (C, H, W, N) of a convolution from dy (K, OH, OW, N) and w (K, C, KH, KW):
        dcols = w.T @ dy, then col2im adds each kernel offset's block back onto the input
        positions it was read from."""
        xp = self.xp
        C, H, W, N = x_shape
        K, _, KH, KW = w.shape
        _, OH, OW, _ = dy.shape
        dcols = w.reshape(K, C * KH * KW).T @ dy.reshape(K, OH * OW * N)
        dcols = dcols.reshape(C, KH, KW, OH, OW, N)
        dxpad = xp.zeros((C, H + 2 * pad, W + 2 * pad, N), dtype=dy.dtype)
        for p in range(KH):
            for q in range(KW):
                dxpad[:, _strided(p, stride, OH), _strided(q, stride, OW)] += dcols[:, p, q]
        dx = dxpad[:, pad:pad + H, pad:pad + W, :] if pad else dxpad
        return xp.ascontiguousarray(dx)

    # ------------------------------------------------------------------- pooling
    def maxpool2d_forward(self, x, size: int, stride: int):
        xp = self.xp
        views = _pool_views(x, size, stride, *self.check_pool2d(x, size, stride))
        # arg: the offset t = p*size + q of each window's first maximum in row-major
        # order, found by scanning the offsets with a running maximum y; a strict '>'
        # keeps the earlier offset on ties
        arg = xp.zeros(views[0].shape, dtype=np.min_scalar_type(size * size))
        better = xp.empty(views[0].shape, dtype=bool)
        y = views[0]
        for t, view in enumerate(views[1:], start=1):
            xp.greater(view, y, out=better)
            # the first maximum allocates y, the later ones update it in place
            y = xp.maximum(y, view, out=None if t == 1 else y)
            # windows where t is better now have argmax t: t exceeds every earlier offset
            xp.maximum(arg, better.view(np.uint8) * arg.dtype.type(t), out=arg)
        if size == 1:  # y is still a view of x
            y = y.copy()
        return y, (arg, x.shape, size, stride)

    def maxpool2d_backward(self, dy, ctx):
        xp = self.xp
        arg, x_shape, size, stride = ctx
        _, H, W, _ = x_shape
        OH, OW = dy.shape[1:3]
        # Without overlaps each position is written once below, so only the positions
        # in no window (gaps, leftover rows or columns) need zeroing first.
        exact = stride == size and H == OH * size and W == OW * size
        dx = xp.empty(x_shape, dtype=dy.dtype) if exact else xp.zeros(x_shape, dtype=dy.dtype)
        hit = xp.empty(arg.shape, dtype=bool)
        for t, block in enumerate(_pool_views(dx, size, stride, OH, OW)):
            xp.equal(arg, t, out=hit)
            if stride >= size:
                xp.multiply(dy, hit, out=block)
            else:  # overlapping windows: positions shared by windows accumulate
                block += dy * hit
        return dx

    def avgpool2d_forward(self, x, size: int, stride: int):
        views = _pool_views(x, size, stride, *self.check_pool2d(x, size, stride))
        y = views[0].copy()
        for view in views[1:]:
            y += view
        y *= 1.0 / (size * size)
        return y, (x.shape, size, stride)

    def avgpool2d_backward(self, dy, ctx):
        x_shape, size, stride = ctx
        dx = self.xp.zeros(x_shape, dtype=dy.dtype)
        share = dy * (1.0 / (size * size))
        for block in _pool_views(dx, size, stride, *dy.shape[1:3]):
            block += share
        return dx

    def relu_maxpool2d_forward(self, x, size: int, stride: int):
        """Pooled first, then the ReLU: the two commute."""
        y, pool_ctx = self.maxpool2d_forward(x, size, stride)  # which checks x
        return self.xp.maximum(y, 0, out=y), (pool_ctx, y)

    def relu_maxpool2d_backward(self, dy, ctx):
        pool_ctx, y = ctx
        return self.maxpool2d_backward(dy * (y > 0), pool_ctx)

    def conv2d_relu_maxpool2d_forward(self, x, w, b, stride: int, pad: int, size: int,
                                      pool_stride: int):
        """The convolution, then the ReLU and max-pool, each kernel in turn."""
        conv, conv_ctx = self.conv2d_forward(x, w, b, stride, pad)
        y, pool_ctx = self.relu_maxpool2d_forward(conv, size, pool_stride)
        return y, (conv_ctx, pool_ctx)

    def conv2d_relu_maxpool2d_backward(self, dy, ctx, need_dx: bool = True):
        conv_ctx, pool_ctx = ctx
        return self.conv2d_backward(self.relu_maxpool2d_backward(dy, pool_ctx), conv_ctx,
                                    need_dx=need_dx)

    # --------------------------------------------------------------- activation
    def tanh_forward(self, x):
        y = self.xp.tanh(x)
        return y, y

    def tanh_backward(self, dy, ctx):
        y = ctx
        return dy * (1.0 - y * y)

    # ------------------------------------------------------------ normalisation
    def batchnorm_forward(self, x, gamma, beta, running_mean, running_var, *, training: bool,
                          momentum: float, eps: float):
        self.check_batchnorm(x, gamma, beta, running_mean, running_var)
        xp = self.xp
        if training:
            m = x.shape[1]
            mean = x.mean(axis=1)
            centered = x - mean[:, None]
            var = (centered * centered).mean(axis=1)
            self._update_running(running_mean, running_var, mean, var, m, momentum)
        else:
            centered = x - running_mean[:, None]
            var = running_var
        inv_std = 1.0 / xp.sqrt(var + eps)
        xhat = centered
        xhat *= inv_std[:, None]
        y = xhat * gamma[:, None]
        y += beta[:, None]
        return y, (xhat, inv_std, gamma, training)

    @staticmethod
    def _update_running(running_mean, running_var, mean, var, m: int, momentum: float) -> None:
        """The running estimates' step, in place, from a batch's mean and biased variance
        over m values (the variance made unbiased)."""
        running_mean *= 1.0 - momentum
        running_mean += momentum * mean
        running_var *= 1.0 - momentum
        running_var += (momentum * m / (m - 1)) * var

    def batchnorm_backward(self, dy, ctx, need_dx: bool = True):
        xhat, inv_std, gamma, training = ctx
        dbeta = dy.sum(axis=1)
        dgamma = (dy * xhat).sum(axis=1)
        if not need_dx:
            return None, dgamma, dbeta
        scale = gamma * inv_std
        if training:
            m = dy.shape[1]
            dx = dy - (dbeta / m)[:, None]
            dx -= xhat * (dgamma / m)[:, None]
            dx *= scale[:, None]
        else:
            dx = dy * scale[:, None]
        return dx, dgamma, dbeta

    def batchnorm_relu_maxpool2d_forward(self, x, gamma, beta, running_mean, running_var,
                                         size: int, stride: int, *, training: bool,
                                         momentum: float, eps: float):
        """The batch norm, then the ReLU and max-pool, each kernel in turn."""
        self.check_pool2d(x, size, stride)
        normed, bn_ctx = self.batchnorm_forward(
            x.reshape(x.shape[0], -1), gamma, beta, running_mean, running_var,
            training=training, momentum=momentum, eps=eps)
        y, pool_ctx = self.relu_maxpool2d_forward(normed.reshape(x.shape), size, stride)
        return y, (bn_ctx, pool_ctx)

    def batchnorm_relu_maxpool2d_backward(self, dy, ctx, need_dx: bool = True):
        bn_ctx, pool_ctx = ctx
        dnormed = self.relu_maxpool2d_backward(dy, pool_ctx)
        dx, dgamma, dbeta = self.batchnorm_backward(dnormed.reshape(dnormed.shape[0], -1), bn_ctx,
                                                    need_dx=need_dx)
        return (None if dx is None else dx.reshape(dnormed.shape)), dgamma, dbeta

    # -------------------------------------------------------------------- dense
    def linear_forward(self, x, w, b):
        self.check_linear(x, w, b)
        y = w @ x
        if b is not None:
            y += b[:, None]
        return y, (x, w, b is not None)

    def linear_backward(self, dy, ctx, need_dx: bool = True):
        x, w, has_bias = ctx
        dw = dy @ x.T
        db = dy.sum(axis=1) if has_bias else None
        dx = w.T @ dy if need_dx else None
        return dx, dw, db

    # --------------------------------------------------------------------- loss
    def softmax(self, logits):
        _, exp, sum_exp = self._shifted_exp(logits)
        exp /= sum_exp
        return exp

    def _shifted_exp(self, logits):
        """(z - max z, exp(z - max z), its column sums (1, N)) for logits z (K, N)."""
        shifted = logits - logits.max(axis=0, keepdims=True)
        exp = self.xp.exp(shifted)
        return shifted, exp, exp.sum(axis=0, keepdims=True)

    def softmax_cross_entropy(self, logits, labels, label_smoothing: float = 0.0):
        self.check_loss(logits, labels)
        xp = self.xp
        k, n = logits.shape
        shifted, exp, sum_exp = self._shifted_exp(logits)
        log_sum_exp = xp.log(sum_exp)
        cols = xp.arange(n)
        # sum_k q_k (z_k - m) - log_sum_exp = -(cross entropy of q against softmax)
        target_logit = (1.0 - label_smoothing) * shifted[labels, cols]
        if label_smoothing:
            target_logit = target_logit + (label_smoothing / k) * shifted.sum(axis=0)
        loss = (log_sum_exp[0] - target_logit).mean()
        grad = exp
        grad /= sum_exp  # softmax(z), in place
        if label_smoothing:
            grad -= label_smoothing / k
        grad[labels, cols] -= 1.0 - label_smoothing
        grad /= n
        return loss, grad

    def count_correct(self, logits, labels, correct) -> None:
        self.check_count(logits, labels, correct)
        correct += (logits.argmax(axis=0) == labels).sum()

    # ------------------------------------------------------------- augmentation
    def separable_filter(self, a, gh, gw):
        """Two matrix products."""
        self.check_separable_filter(a, gh, gw)
        F, H, W, N = a.shape
        along_h = (gh @ a.reshape(F, H, W * N)).reshape(F, H, W, N)
        return self.xp.matmul(gw, along_h)  # (W, W) @ (F, H, W, N): along W in every row

    def warp_bilinear(self, x, coeffs, displacement, background: float):
        """The image gets a one-pixel border of background and the coordinates are clipped
        into it, so every corner of every point is a valid index and no mask is needed."""
        self.check_warp(x, coeffs, displacement)
        xp = self.xp
        C, H, W, N = x.shape
        dtype = x.dtype
        j = xp.arange(W, dtype=dtype)[None, :, None]
        i = xp.arange(H, dtype=dtype)[:, None, None]
        fx = coeffs[0] * j + coeffs[1] * i + coeffs[2]  # (H, W, N)
        fy = coeffs[3] * j + coeffs[4] * i + coeffs[5]
        if displacement is not None:
            fx += displacement[0]
            fy += displacement[1]
        padded = xp.full((C, H + 2, W + 2, N), dtype.type(background), dtype=dtype)
        padded[:, 1:-1, 1:-1] = x
        padded = padded.reshape(C, -1)
        # Padded coordinates: the image spans [1, W], the border 0 and W + 1. Computed in
        # place, as these (H, W, N) arrays are the largest temporaries of a batch.
        fx += 1
        fy += 1
        xp.clip(fx, 0, W + 1, out=fx)
        xp.clip(fy, 0, H + 1, out=fy)
        x0, y0 = xp.floor(fx), xp.floor(fy)
        xp.minimum(x0, W, out=x0)
        xp.minimum(y0, H, out=y0)
        fx -= x0
        fy -= y0
        y0 *= W + 2  # the pixel's offset in a padded image, exact in floats
        y0 += x0
        index = y0.astype(np.intp)
        index *= N
        index += xp.arange(N)
        row = (W + 2) * N  # index step of one row down
        top = xp.take(padded, index, axis=1)
        top += fx * (xp.take(padded, index + N, axis=1) - top)
        index += row
        bottom = xp.take(padded, index, axis=1)
        bottom += fx * (xp.take(padded, index + N, axis=1) - bottom)
        bottom -= top
        bottom *= fy
        top += bottom
        return top

    # ---------------------------------------------------------------- optimizer
    def adam_update_device(self, p, g, m, v, factors, *, beta1: float, beta2: float,
                           eps: float, weight_decay: float) -> None:
        self.check_adam(p, g, m, v)
        xp = self.xp
        decay, step_size, bias2 = factors[0], factors[1], factors[2]
        # one scratch array, each operation in place: on a whole parameter buffer NumPy's
        # temporaries would each be a fresh mapping of pages (docs/performance.md, Adam);
        # the operations and their rounding are those of the formula
        scratch = xp.multiply(g, 1.0 - beta1)
        m *= beta1
        m += scratch
        xp.multiply(g, g, out=scratch)
        scratch *= 1.0 - beta2
        v *= beta2
        v += scratch
        if weight_decay:
            p *= decay
        xp.divide(v, bias2, out=scratch)
        xp.sqrt(scratch, out=scratch)
        scratch += eps
        xp.divide(m, scratch, out=scratch)
        scratch *= step_size
        p -= scratch
