"""The NumPy backend: the reference, with a faster convolution (MEC), batch copy and
batch norm.

Everything but the convolution, the fused ReLU + max-pool, batch norm and the batch gather is
:class:`~fastlenet.backends.reference.ReferenceBackend`'s plain array maths. The
convolution is lowered along the width only (Cho and Brand's MEC, "Memory-efficient
Convolution", 2017) instead of into a full im2col matrix (x: (C, H, W, N),
w: (K, C, KH, KW), stride s):

    rows[r, c, q, j, n] = xpad[c, r, j*s + q, n]       ((OH-1)*s + KH, C, KW, OW, N)
    a[i] = rows[i*s : i*s + KH] as one matrix    ((p, c, q), (j, n)): KH*C*KW x OW*N
    y[:, i] = w' @ a[i]     (w' is w with its columns in (p, c, q) order), plus b
    dw' = sum_i dy[:, i] @ a[i].T,   db = sum of dy over (i, j, n)

a[i] is im2col's block for output row i, and the a[i] of neighbouring rows share memory
(a view, no copy), so rows is about KH/s times smaller than the full im2col matrix
(larger only when s > KH, whose gap rows it copies): it stays in cache between the
forward and the backward (docs/performance.md, NumPy backend). The input gradient is
the reference's col2im.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .reference import ReferenceBackend

# the weight gradient's products take about this many (output row, channel) columns of
# dy at once: thinner ones run slowly in BLAS (see conv2d_backward)
WEIGHT_GRAD_COLUMNS = 24


class NumpyBackend(ReferenceBackend):
    name = "numpy"

    def to_batch_last(self, x_nchw, index=None):
        x = np.asarray(x_nchw)
        if index is not None:
            x = x[index]
        N = x.shape[0]
        flat = x.reshape(N, math.prod(x.shape[1:]))
        out = np.empty((flat.shape[1], N), dtype=x.dtype)
        # In blocks of 8 samples: a transposing copy reads one side with a large stride,
        # and NumPy's one-call copy ran several times slower (docs/performance.md)
        for start in range(0, N, 8):
            out[:, start:start + 8] = flat[start:start + 8].T
        return out.reshape(*x.shape[1:], N)

    # --------------------------------------------------------------- convolution
    def conv2d_forward(self, x, w, b, stride: int, pad: int):
        OH, OW = self.check_conv2d(x, w, b, stride, pad)
        C, _, _, N = x.shape
        K, _, KH, KW = w.shape
        xpad = self._padded(x, pad)
        # rows[r, c, q, j, n] = xpad[c, r, j*stride + q, n] for the input rows the windows
        # cover: only the column shifts are copied (the module docstring has the layout)
        rows = np.empty(((OH - 1) * stride + KH, C, KW, OW, N), dtype=x.dtype)
        sc, sh, sw, sn = xpad.strides
        rows[...] = as_strided(xpad, shape=rows.shape, strides=(sh, sc, sw, sw * stride, sn),
                               writeable=False)
        R = C * KW
        wmat = w.transpose(0, 2, 1, 3).reshape(K, KH * R)  # columns in (p, c, q) order
        y = np.empty((K, OH, OW, N), dtype=x.dtype)
        for i in range(OH):  # y[:, i] = wmat @ a[i], written in place
            top = i * stride
            np.matmul(wmat, rows[top:top + KH].reshape(KH * R, OW * N),
                      out=y[:, i].reshape(K, OW * N))
        if b is not None:
            y += b.reshape(K, 1, 1, 1)
        return y, (rows, w, x.shape, stride, pad, b is not None)

    def conv2d_backward(self, dy, ctx, need_dx: bool = True):
        rows, w, x_shape, stride, pad, has_bias = ctx
        C, _, _, N = x_shape
        K, _, KH, KW = w.shape
        _, OH, OW, _ = dy.shape
        R = C * KW
        # dw' = sum_i dy[:, i] @ a[i].T. With few output channels each product is too thin
        # for BLAS to run well (LeNet-5's conv1: 6 x 25 from a reduction over OW*N), so
        # g output rows go into one product, P = A @ [dy[:, i0]; ...; dy[:, i0+g-1]].T,
        # against the input rows A that the g windows cover, and row t's block is
        # P[(t*stride + p, c, q), (t, k)]: more multiply-adds, in fewer and wider products
        # (docs/performance.md, NumPy backend)
        g = max(1, min(OH, WEIGHT_GRAD_COLUMNS // max(K, 1)))
        dy_rows = dy.reshape(K, OH, OW * N).transpose(1, 0, 2)  # dy_rows[i] = dy[:, i]
        dw = np.zeros((KH, R, K), dtype=dy.dtype)
        for i0 in range(0, OH, g):
            n = min(g, OH - i0)
            span = (n - 1) * stride + KH
            top = i0 * stride
            A = rows[top:top + span].reshape(span * R, OW * N)
            P = (A @ dy_rows[i0:i0 + n].reshape(n * K, OW * N).T).reshape(span, R, n, K)
            for t in range(n):
                dw += P[t * stride:t * stride + KH, :, t]
        dw = np.ascontiguousarray(dw.reshape(KH, C, KW, K).transpose(3, 1, 0, 2))
        db = dy.reshape(K, OH * OW * N).sum(axis=1) if has_bias else None
        dx = self._conv2d_input_gradient(dy, w, x_shape, stride, pad) if need_dx else None
        return dx, dw, db

    # ------------------------------------------------------------ normalisation
    def batchnorm_forward(self, x, gamma, beta, running_mean, running_var, *, training: bool,
                          momentum: float, eps: float):
        """The reference's maths with fewer fresh arrays: the squares are summed in the
        output array before y overwrites it (a fresh array costs a pass of page faults).
        Row sums stay NumPy's pairwise sums: einsum's running sums lose digits in float32
        over a row of 10^5 values."""
        self.check_batchnorm(x, gamma, beta, running_mean, running_var)
        m = x.shape[1]
        if training:
            mean = x.sum(axis=1)
            mean /= m
            centered = x - mean[:, None]
            y = np.multiply(centered, centered)
            var = y.sum(axis=1)
            var /= m
            self._update_running(running_mean, running_var, mean, var, m, momentum)
        else:
            centered = x - running_mean[:, None]
            var = running_var
            y = np.empty_like(centered)
        inv_std = 1.0 / np.sqrt(var + eps)
        np.multiply(centered, (gamma * inv_std)[:, None], out=y)
        y += beta[:, None]
        # the ctx keeps x - mean, not xhat: the backward scales its sums by inv_std instead
        return y, (centered, inv_std, gamma, training)

    def batchnorm_backward(self, dy, ctx, need_dx: bool = True):
        centered, inv_std, gamma, training = ctx
        m = dy.shape[1]
        dbeta = _row_dots(dy, self._ones(m, dy.dtype))
        dgamma = _row_dots(dy, centered)
        dgamma *= inv_std
        if not need_dx:
            return None, dgamma, dbeta
        scale = gamma * inv_std
        if not training:
            return np.multiply(dy, scale[:, None]), dgamma, dbeta
        # scale * (dy - dbeta / M - xhat * dgamma / M), xhat = centered * inv_std, in dx
        # alone: a second fresh array of this size costs more in page faults than a pass
        dx = np.multiply(centered, (-inv_std * dgamma / m)[:, None])
        dx += dy
        dx -= (dbeta / m)[:, None]
        dx *= scale[:, None]
        return dx, dgamma, dbeta

    def _ones(self, m: int, dtype):
        """A read-only row of m ones (a row sum is a dot product with it), kept per dtype."""
        rows = self.__dict__.setdefault("_ones_rows", {})
        key = np.dtype(dtype).str
        if key not in rows or rows[key].shape[0] < m:
            rows[key] = np.ones(m, dtype=dtype)
            rows[key].flags.writeable = False
        return rows[key][:m]

    # ------------------------------------------------------------------- pooling
    def relu_maxpool2d_forward(self, x, size: int, stride: int):
        """The reference's max-pool, with windows whose max is <= 0 marked dead in arg."""
        y, ctx = self.maxpool2d_forward(x, size, stride)
        arg = ctx[0]
        # Windows whose max is <= 0 pass no gradient through the ReLU: give them the
        # offset size*size, which matches no position, so the plain max-pool backward
        # applies the ReLU's gradient too.
        dead = y <= 0
        np.maximum(arg, dead.view(np.uint8) * arg.dtype.type(size * size), out=arg)
        np.maximum(y, 0, out=y)
        return y, ctx

    def relu_maxpool2d_backward(self, dy, ctx):
        return self.maxpool2d_backward(dy, ctx)


def _row_dots(a, b):
    """sum_m a[c, m] * b[..., m] per row c, b (C, M) or (M,), as BLAS dot products: one
    vectorized pass, where an element-wise product and NumPy's pairwise sum take two or
    three. Its many partial sums keep float32's error near 1e-6 over 10^5 terms."""
    if hasattr(np, "vecdot"):  # NumPy 2
        return np.vecdot(a, b)
    return np.matmul(a[:, None, :], b[..., :, None])[:, 0, 0]
