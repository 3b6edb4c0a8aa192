"""The NumPy backend: im2col/col2im with the batch innermost, and BLAS GEMMs.

This is the reference every other backend is tested against, so it stays plain:
no Python loop over pixels or samples, only over the few kernel offsets (at most KH*KW
iterations, each moving a whole (C, OH, OW, N) block).

Convolution as one GEMM (x: (C, H, W, N), w: (K, C, KH, KW)):
    cols[(c, p, q), (i, j, n)] = xpad[c, i*s + p, j*s + q, n]    (C*KH*KW + 1, OH*OW*N)
    the last row of cols is all ones, so the bias is the last column of the weights:
    y = [w | b] @ cols          -> (K, OH*OW*N), already the (K, OH, OW, N) layout
    [dw | db] = dy @ cols.T
    dcols = w.T @ dy, then col2im adds each (p, q) block back into dxpad.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .base import Backend


def _out_size(size: int, window: int, stride: int, pad: int = 0) -> int:
    out = (size + 2 * pad - window) // stride + 1
    if out < 1:
        raise ValueError(f"window {window} with stride {stride} and padding {pad} "
                         f"does not fit an input of size {size}")
    return out


def _windows(x, kh: int, kw: int, stride: int, oh: int, ow: int):
    """Read-only view v[c, p, q, i, j, n] = x[c, i*stride + p, j*stride + q, n]."""
    c, _, _, n = x.shape
    sc, sh, sw, sn = x.strides
    return as_strided(x, shape=(c, kh, kw, oh, ow, n),
                      strides=(sc, sh, sw, sh * stride, sw * stride, sn), writeable=False)


class NumpyBackend(Backend):
    name = "numpy"
    xp = np

    def to_numpy(self, a):
        return np.asarray(a)

    def default_rng(self, seed: int):
        return np.random.default_rng(seed)

    def rng_state(self, rng) -> dict:
        return rng.bit_generator.state

    def set_rng_state(self, rng, state: dict) -> None:
        rng.bit_generator.state = state

    # --------------------------------------------------------------- convolution
    def conv2d_forward(self, x, w, b, stride: int, pad: int):
        c, h, wd, n = x.shape
        k, wc, kh, kw = w.shape
        if wc != c:
            raise ValueError(f"conv2d: input has {c} channels, weights expect {wc}")
        oh, ow = _out_size(h, kh, stride, pad), _out_size(wd, kw, stride, pad)
        if pad:
            xpad = np.zeros((c, h + 2 * pad, wd + 2 * pad, n), dtype=x.dtype)
            xpad[:, pad:pad + h, pad:pad + wd, :] = x
        else:
            xpad = np.ascontiguousarray(x)
        rows = c * kh * kw
        has_bias = b is not None
        cols = np.empty((rows + has_bias, oh * ow * n), dtype=x.dtype)
        cols[:rows].reshape(c, kh, kw, oh, ow, n)[...] = _windows(xpad, kh, kw, stride, oh, ow)
        if has_bias:
            cols[rows] = 1.0
            wmat = np.concatenate([w.reshape(k, rows), b.reshape(k, 1)], axis=1)
        else:
            wmat = w.reshape(k, rows)
        y = (wmat @ cols).reshape(k, oh, ow, n)
        return y, (cols, wmat, x.shape, w.shape, stride, pad, has_bias)

    def conv2d_backward(self, dy, ctx, need_dx: bool = True):
        cols, wmat, x_shape, w_shape, stride, pad, has_bias = ctx
        c, h, wd, n = x_shape
        k, _, kh, kw = w_shape
        _, oh, ow, _ = dy.shape
        rows = c * kh * kw
        dy2 = dy.reshape(k, oh * ow * n)
        dwb = dy2 @ cols.T
        dw = np.ascontiguousarray(dwb[:, :rows]).reshape(w_shape)
        db = np.ascontiguousarray(dwb[:, rows]) if has_bias else None
        if not need_dx:
            return None, dw, db
        dcols = (wmat[:, :rows].T @ dy2).reshape(c, kh, kw, oh, ow, n)
        dxpad = np.zeros((c, h + 2 * pad, wd + 2 * pad, n), dtype=dy.dtype)
        for p in range(kh):
            for q in range(kw):
                dxpad[:, p:p + stride * (oh - 1) + 1:stride,
                      q:q + stride * (ow - 1) + 1:stride, :] += dcols[:, p, q]
        dx = dxpad[:, pad:pad + h, pad:pad + wd, :] if pad else dxpad
        return np.ascontiguousarray(dx), dw, db

    # ------------------------------------------------------------------- pooling
    def _pool_views(self, x, size: int, stride: int):
        c, h, wd, n = x.shape
        oh, ow = _out_size(h, size, stride), _out_size(wd, size, stride)
        v = _windows(x, size, size, stride, oh, ow)
        return [v[:, p, q] for p in range(size) for q in range(size)], (oh, ow)

    def maxpool2d_forward(self, x, size: int, stride: int):
        views, _ = self._pool_views(x, size, stride)
        best = views[0].copy()
        # argmax as the window offset t = p*size + q; strict '>' keeps the first maximum
        arg = np.zeros(best.shape, dtype=np.uint8)
        better = np.empty(best.shape, dtype=bool)
        for t, view in enumerate(views[1:], start=1):
            np.greater(view, best, out=better)
            np.copyto(best, view, where=better)
            np.copyto(arg, t, where=better)
        return best, (arg, x.shape, size, stride)

    def maxpool2d_backward(self, dy, ctx):
        arg, x_shape, size, stride = ctx
        dx = np.zeros(x_shape, dtype=dy.dtype)
        oh, ow = dy.shape[1:3]
        hit = np.empty(arg.shape, dtype=bool)
        for t in range(size * size):
            p, q = divmod(t, size)
            block = dx[:, p:p + stride * (oh - 1) + 1:stride, q:q + stride * (ow - 1) + 1:stride, :]
            np.equal(arg, t, out=hit)
            if stride >= size:  # windows do not overlap: each x position is in one window
                np.multiply(dy, hit, out=block)
            else:
                block += dy * hit
        return dx

    def relu_maxpool2d_forward(self, x, size: int, stride: int):
        y, (arg, x_shape, size, stride) = self.maxpool2d_forward(x, size, stride)
        # windows whose max is <= 0 get no gradient: mark them with an offset that
        # matches no position, so the plain max-pool backward applies the ReLU for free
        dead = y <= 0
        np.copyto(arg, 255, where=dead)
        np.copyto(y, 0, where=dead)
        return y, (arg, x_shape, size, stride)

    def relu_maxpool2d_backward(self, dy, ctx):
        return self.maxpool2d_backward(dy, ctx)

    def avgpool2d_forward(self, x, size: int, stride: int):
        views, _ = self._pool_views(x, size, stride)
        y = views[0].copy()
        for view in views[1:]:
            y += view
        y *= 1.0 / (size * size)
        return y, (x.shape, size, stride)

    def avgpool2d_backward(self, dy, ctx):
        x_shape, size, stride = ctx
        dx = np.zeros(x_shape, dtype=dy.dtype)
        oh, ow = dy.shape[1:3]
        share = dy * (1.0 / (size * size))
        for p in range(size):
            for q in range(size):
                dx[:, p:p + stride * (oh - 1) + 1:stride,
                   q:q + stride * (ow - 1) + 1:stride, :] += share
        return dx
