"""The NumPy backend: im2col along the width (MEC) and col2im with the batch innermost,
and BLAS GEMMs.

This is the reference every other backend is tested against, so it stays plain:
no Python loop over pixels, only over the few kernel offsets (at most KH*KW iterations,
each moving a whole (C, OH, OW, N) block) and over output rows (one GEMM each, or one
per group of rows), and over samples only in ``to_batch_last``, in blocks of 8 (measured
faster than NumPy's one transposing copy).

Convolution as one GEMM per output row (x: (C, H, W, N), w: (K, C, KH, KW)), im2col
lowered along the width only (Cho and Brand's MEC, "Memory-efficient Convolution", 2017):
    rows[r, c, q, j, n] = xpad[c, r, j*s + q, n]       ((OH-1)*s + KH, C, KW, OW, N)
    a[i] = rows[i*s : i*s + KH] as one matrix    ((p, c, q), (j, n)): KH*C*KW x OW*N
    a[i] is im2col's block for output row i, and the a[i] of neighbouring rows share
    memory (a view, no copy), so rows is OH*KH / ((OH-1)*s + KH) times smaller than the
    full im2col matrix (4.4x for conv1; about KH/s; larger when s > KH, whose gap rows
    it copies);
    y[:, i] = w' @ a[i]     (w' is w with its columns in (p, c, q) order), plus b
    dw' = sum_i dy[:, i] @ a[i].T, with the products of g neighbouring output rows done
          as one product over the input rows they cover when K is small (the code says
          why),   db = sum of dy over (i, j, n)
    dcols = w.T @ dy, then col2im adds each (p, q) block back into dxpad.
On LeNet-5's training step this took 0.74-0.82 of the time of one full im2col GEMM
(2-core Zen 5, interleaved steps): the full matrix (10 MB for conv1 at batch 128) had
left the caches by the time the backward read it again, and conv1's thin products ran
slowly in BLAS.

Max-pool keeps the offset of each window's first maximum (the smallest unsigned type); the backward writes
each offset's share of dy straight into dx, and the fused ReLU + max-pool marks windows
the ReLU zeroes with an offset that matches no position.

Memory ownership: every array a kernel returns or keeps in a ctx is allocated by that
call and never written again by this backend, so a ctx stays valid however many calls
run before its backward (a model runs all its forwards first). No workspace is reused
across calls: NumPy's allocator already hands freed blocks back (measured: about 70 page
faults per LeNet-5 training step), so reuse would save nothing and cost that guarantee.
A ctx may also hold arrays of the caller's (a linear layer's input and weights, a
convolution's weights): the caller must not change those in place
before the backward, which the layers of fastlenet.nn never do.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .base import Backend

# the weight gradient's products take about this many (output row, channel) columns of
# dy at once: thinner ones ran slowly in OpenBLAS (see conv2d_backward)
WEIGHT_GRAD_COLUMNS = 24


def _windows(x, KH: int, KW: int, stride: int, OH: int, OW: int, writeable: bool = False):
    """View v[c, p, q, i, j, n] = x[c, i*stride + p, j*stride + q, n] (read-only unless
    asked; write only through views v[:, p, q], whose elements are distinct)."""
    C, _, _, N = x.shape
    sc, sh, sw, sn = x.strides
    return as_strided(x, shape=(C, KH, KW, OH, OW, N),
                      strides=(sc, sh, sw, sh * stride, sw * stride, sn), writeable=writeable)


def _pool_views(x, size: int, stride: int, OH: int, OW: int, writeable: bool = False):
    """The size*size views x[:, p::stride, q::stride] (C, OH, OW, N), in row-major (p, q)
    order, cut to the OH x OW windows."""
    v = _windows(x, size, size, stride, OH, OW, writeable)
    return [v[:, p, q] for p in range(size) for q in range(size)]


class HostBackend(Backend):
    """What the CPU backends share: NumPy arrays on the host and NumPy's generators.
    Kernels are each backend's own (tests/test_backends.py lists who implements what)."""

    xp = np

    def to_numpy(self, a):
        return np.asarray(a)

    def default_rng(self, seed: int):
        return np.random.default_rng(seed)

    def rng_state(self, rng) -> dict:
        return rng.bit_generator.state

    def set_rng_state(self, rng, state: dict) -> None:
        rng.bit_generator.state = state


class NumpyBackend(HostBackend):
    name = "numpy"

    def to_batch_last(self, x_nchw, index=None):
        x = np.asarray(x_nchw)
        if index is not None:
            x = x[index]
        N = x.shape[0]
        flat = x.reshape(N, math.prod(x.shape[1:]))
        out = np.empty((flat.shape[1], N), dtype=x.dtype)
        # The one loop over samples in this backend, in blocks of 8: a transposing copy
        # reads one side with a large stride, and NumPy's plain one ran
        # 4x slower than this copy of 8 samples at a time (measured, batch 128 of 32x32).
        for start in range(0, N, 8):
            out[:, start:start + 8] = flat[start:start + 8].T
        return out.reshape(*x.shape[1:], N)

    # --------------------------------------------------------------- convolution
    def conv2d_forward(self, x, w, b, stride: int, pad: int):
        OH, OW = self.check_conv2d(x, w, b, stride, pad)
        C, H, W, N = x.shape
        K, _, KH, KW = w.shape
        if pad:
            xpad = np.zeros((C, H + 2 * pad, W + 2 * pad, N), dtype=x.dtype)
            xpad[:, pad:pad + H, pad:pad + W, :] = x
        else:
            xpad = x
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
        C, H, W, N = x_shape
        K, _, KH, KW = w.shape
        _, OH, OW, _ = dy.shape
        R = C * KW
        # dw' = sum_i dy[:, i] @ a[i].T. With few output channels each product is too thin
        # for BLAS to run well (conv1's at batch 128: 6 x 25 from a reduction of 3,584), so
        # g output rows go into one product, P = A @ [dy[:, i0]; ...; dy[:, i0+g-1]].T,
        # against the input rows A that the g windows cover, and row t's block is
        # P[(t*stride + p, c, q), (t, k)]: for conv1 (g = 4) 1.6x the multiply-adds in half
        # the time (2-core Zen 5, OpenBLAS); conv2 (K = 16, g = 1) ran fastest ungrouped
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
        if not need_dx:
            return None, dw, db
        # dcols[(c, p, q), (i, j, n)] = sum_k w[k, c, p, q] dy[k, i, j, n]; each (p, q)
        # block then adds back onto the input positions it was read from
        dcols = (w.reshape(K, C * KH * KW).T @ dy.reshape(K, OH * OW * N))
        dcols = dcols.reshape(C, KH, KW, OH, OW, N)
        dxpad = np.zeros((C, H + 2 * pad, W + 2 * pad, N), dtype=dy.dtype)
        for p in range(KH):
            for q in range(KW):
                dxpad[:, p:p + stride * (OH - 1) + 1:stride,
                      q:q + stride * (OW - 1) + 1:stride, :] += dcols[:, p, q]
        dx = dxpad[:, pad:pad + H, pad:pad + W, :] if pad else dxpad
        return np.ascontiguousarray(dx), dw, db

    # ------------------------------------------------------------------- pooling
    def maxpool2d_forward(self, x, size: int, stride: int):
        views = _pool_views(x, size, stride, *self.check_pool2d(x, size, stride))
        # arg: the offset t = p*size + q of each window's first maximum in row-major
        # order, found by scanning the offsets with a running maximum y; a strict '>'
        # keeps the earlier offset on ties. (np.copyto(..., where=) would read better
        # but ran 10x slower than these whole-array passes.)
        arg = np.zeros(views[0].shape, dtype=np.min_scalar_type(size * size))
        better = np.empty(views[0].shape, dtype=bool)
        y = views[0]
        for t, view in enumerate(views[1:], start=1):
            np.greater(view, y, out=better)
            # the first maximum allocates y, the later ones update it in place
            y = np.maximum(y, view, out=None if t == 1 else y)
            # windows where t is better now have argmax t: t exceeds every earlier offset
            np.maximum(arg, better.view(np.uint8) * arg.dtype.type(t), out=arg)
        if size == 1:  # y is still a view of x
            y = y.copy()
        return y, (arg, x.shape, size, stride)

    def maxpool2d_backward(self, dy, ctx):
        arg, x_shape, size, stride = ctx
        _, H, W, _ = x_shape
        OH, OW = dy.shape[1:3]
        # Without overlaps each position is written once below, so only the positions
        # in no window (gaps, leftover rows or columns) need zeroing first.
        exact = stride == size and H == OH * size and W == OW * size
        dx = np.empty(x_shape, dtype=dy.dtype) if exact else np.zeros(x_shape, dtype=dy.dtype)
        blocks = _pool_views(dx, size, stride, OH, OW, writeable=True)
        hit = np.empty(arg.shape, dtype=bool)
        for t, block in enumerate(blocks):
            np.equal(arg, t, out=hit)
            if stride >= size:
                np.multiply(dy, hit, out=block)
            else:  # overlapping windows: positions shared by windows accumulate
                block += dy * hit
        return dx

    def relu_maxpool2d_forward(self, x, size: int, stride: int):
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

    def avgpool2d_forward(self, x, size: int, stride: int):
        views = _pool_views(x, size, stride, *self.check_pool2d(x, size, stride))
        y = views[0].copy()
        for view in views[1:]:
            y += view
        y *= 1.0 / (size * size)
        return y, (x.shape, size, stride)

    def avgpool2d_backward(self, dy, ctx):
        x_shape, size, stride = ctx
        dx = np.zeros(x_shape, dtype=dy.dtype)
        OH, OW = dy.shape[1:3]
        share = dy * (1.0 / (size * size))
        for p in range(size):
            for q in range(size):
                dx[:, p:p + stride * (OH - 1) + 1:stride,
                   q:q + stride * (OW - 1) + 1:stride, :] += share
        return dx
