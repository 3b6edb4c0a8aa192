"""Naive loops, the oracles of every backend's kernels (tests/test_kernels.py) and of
fastlenet.functional: each kernel's definition written as plainly as possible, a Python
loop over every output position, the window read straight from the (padded) input.
Only the batch axis N is vectorised (every array is batch-last, ``(C, H, W, N)`` or
``(F, N)``, as in ``fastlenet/backends/base.py``), so small shapes run in milliseconds.
They are slow on purpose and never used outside the tests.
"""

import numpy as np


def _pad(x, pad):
    """Zero-pad the two spatial axes of ``x`` (C, H, W, N)."""
    return np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _out(size, window, stride, pad=0):
    return (size + 2 * pad - window) // stride + 1


# ----------------------------------------------------------------- convolution
def conv2d_forward(x, w, b, stride, pad):
    """y[k, i, j, n] = b[k] + sum_{c,p,q} w[k, c, p, q] xpad[c, i*stride + p, j*stride + q, n]."""
    c_in, h, wd, n = x.shape
    k_out, _, kh, kw = w.shape
    oh, ow = _out(h, kh, stride, pad), _out(wd, kw, stride, pad)
    xpad = _pad(x, pad)
    y = np.zeros((k_out, oh, ow, n), dtype=x.dtype)
    for k in range(k_out):
        for i in range(oh):
            for j in range(ow):
                for c in range(c_in):
                    for p in range(kh):
                        for q in range(kw):
                            y[k, i, j] += w[k, c, p, q] * xpad[c, i * stride + p, j * stride + q]
                if b is not None:
                    y[k, i, j] += b[k]
    return y


def conv2d_backward(dy, x, w, stride, pad):
    """(dx, dw, db) of :func:`conv2d_forward`: each output position sends dy back through
    the products that made it."""
    c_in, h, wd, _ = x.shape
    k_out, _, kh, kw = w.shape
    _, oh, ow, _ = dy.shape
    xpad = _pad(x, pad)
    dxpad = np.zeros_like(xpad)
    dw = np.zeros_like(w)
    db = np.zeros(k_out, dtype=dy.dtype)
    for k in range(k_out):
        for i in range(oh):
            for j in range(ow):
                for c in range(c_in):
                    for p in range(kh):
                        for q in range(kw):
                            r, s = i * stride + p, j * stride + q
                            dxpad[c, r, s] += w[k, c, p, q] * dy[k, i, j]
                            dw[k, c, p, q] += (xpad[c, r, s] * dy[k, i, j]).sum()
                db[k] += dy[k, i, j].sum()
    dx = dxpad[:, pad:pad + h, pad:pad + wd]
    return dx, dw, db


# --------------------------------------------------------------------- pooling
def maxpool2d_forward(x, size, stride):
    """y[c, i, j, n] = max of the window; also returns the argmax (p, q) of every output:
    the first maximum in row-major window order, as PyTorch routes the gradient."""
    c_in, h, wd, n = x.shape
    oh, ow = _out(h, size, stride), _out(wd, size, stride)
    y = np.zeros((c_in, oh, ow, n), dtype=x.dtype)
    arg = np.zeros((c_in, oh, ow, n, 2), dtype=np.int64)
    for c in range(c_in):
        for i in range(oh):
            for j in range(ow):
                for m in range(n):
                    window = x[c, i * stride:i * stride + size, j * stride:j * stride + size, m]
                    t = int(np.argmax(window))  # row-major, first occurrence on ties
                    y[c, i, j, m] = window.flat[t]
                    arg[c, i, j, m] = divmod(t, size)
    return y, arg


def maxpool2d_backward(dy, x, size, stride):
    """dx: each window's dy goes to its first maximum; overlapping windows add up."""
    _, arg = maxpool2d_forward(x, size, stride)
    c_in, oh, ow, n = dy.shape
    dx = np.zeros_like(x)
    for c in range(c_in):
        for i in range(oh):
            for j in range(ow):
                for m in range(n):
                    p, q = arg[c, i, j, m]
                    dx[c, i * stride + p, j * stride + q, m] += dy[c, i, j, m]
    return dx


def relu_maxpool2d_forward(x, size, stride):
    """maxpool(relu(x)), in that order."""
    return maxpool2d_forward(np.maximum(x, 0), size, stride)[0]


def relu_maxpool2d_backward(dy, x, size, stride):
    """The chain rule through the pool, then the ReLU (whose slope at 0 is 0, as PyTorch)."""
    return maxpool2d_backward(dy, np.maximum(x, 0), size, stride) * (x > 0)


def avgpool2d_forward(x, size, stride):
    """y[c, i, j, n] = mean of the size x size window."""
    c_in, h, wd, n = x.shape
    oh, ow = _out(h, size, stride), _out(wd, size, stride)
    y = np.zeros((c_in, oh, ow, n), dtype=x.dtype)
    for c in range(c_in):
        for i in range(oh):
            for j in range(ow):
                window = x[c, i * stride:i * stride + size, j * stride:j * stride + size]
                y[c, i, j] = window.sum(axis=(0, 1)) / (size * size)
    return y


def avgpool2d_backward(dy, x_shape, size, stride):
    """dx: every position of a window gets dy / size**2; overlapping windows add up."""
    c_in, oh, ow, _ = dy.shape
    dx = np.zeros(x_shape, dtype=dy.dtype)
    for c in range(c_in):
        for i in range(oh):
            for j in range(ow):
                dx[c, i * stride:i * stride + size, j * stride:j * stride + size] += (
                    dy[c, i, j] / (size * size))
    return dx


# --------------------------------------------------------------- dense and loss
def linear_forward(x, w, b):
    """y[o, n] = b[o] + sum_i w[o, i] * x[i, n]."""
    out_f, in_f = w.shape
    y = np.zeros((out_f, x.shape[1]), dtype=x.dtype)
    for o in range(out_f):
        for i in range(in_f):
            y[o] += w[o, i] * x[i]
        if b is not None:
            y[o] += b[o]
    return y


def linear_backward(dy, x, w):
    """dx[i, n] = sum_o w[o, i] dy[o, n]; dw[o, i] = sum_n dy[o, n] x[i, n];
    db[o] = sum_n dy[o, n]."""
    out_f, in_f = w.shape
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for o in range(out_f):
        for i in range(in_f):
            dx[i] += w[o, i] * dy[o]
            dw[o, i] = (dy[o] * x[i]).sum()
    return dx, dw, dy.sum(axis=1)


def softmax_cross_entropy(logits, labels, label_smoothing=0.0):
    """Mean over samples of -sum_k q_k log softmax(z)_k, q = (1 - s) onehot + s / K;
    and its gradient (softmax(z) - q) / N. One sample at a time."""
    k, n = logits.shape
    loss = 0.0
    grad = np.zeros_like(logits)
    for m in range(n):
        z = logits[:, m].astype(np.float64)
        log_p = z - z.max() - np.log(np.exp(z - z.max()).sum())
        q = np.full(k, label_smoothing / k)
        q[labels[m]] += 1.0 - label_smoothing
        loss -= (q * log_p).sum() / n
        grad[:, m] = (np.exp(log_p) - q) / n
    return loss, grad
