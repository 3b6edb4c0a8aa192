"""Batch normalisation kernels, forward and backward, alone and fused with the ReLU and
max-pool that follow it (kernels/batchnorm.cu holds the CUDA versions of the first two).

One task per channel (row of x (C, M)) in each direction, so each direction is one
parallel region: the row's reduction (sum and sum of squares together forward; the sums
of dy and dy * xhat together backward) and then its element-wise pass, while the row is
still in cache. Sums run in the arrays' dtype over blocks of SUM_BLOCK values (in the
pooled block's backward, over runs of the batch's N values), vectorized so that each lane
adds a few dozen, and in float64 across blocks: float64 adds in the inner loop ran at half
the vector width (docs/performance.md, Batch norm). The forward's squares are taken about the row's first value, so
the one-pass variance loses nothing to cancellation when the mean is large against the
spread.
"""

import math

import numpy as np
from numba import prange

from .jit import parallel, serial
from .pool import pool_window, pool_window_2x2

SUM_BLOCK = 1024  # values summed in the arrays' dtype before the float64 total takes them


def _channel_statistics(row, c, training, momentum, eps, running_mean, running_var, mean,
                        inv_std):
    """mean[c] and inv_std[c] = 1 / sqrt(var + eps) of channel c, whose values are ``row``:
    the batch's in training (and the running estimates updated), else the running
    estimates; returned too, in float64."""
    if training:
        M = row.shape[0]
        shift = row[0]
        zero = shift - shift
        s = 0.0
        ss = 0.0
        for m0 in range(0, M, SUM_BLOCK):
            bs = zero
            bss = zero
            for m in range(m0, min(m0 + SUM_BLOCK, M)):
                d = row[m] - shift
                bs += d
                bss += d * d
            s += bs
            ss += bss
        offset = s / M
        var = max(ss / M - offset * offset, 0.0)
        mu = float(shift) + offset
        running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mu
        running_var[c] = (1.0 - momentum) * running_var[c] + momentum * var * M / (M - 1)
    else:
        mu = float(running_mean[c])
        var = float(running_var[c])
    istd = 1.0 / math.sqrt(var + eps)
    mean[c] = mu
    inv_std[c] = istd
    return mu, istd


channel_statistics = serial(_channel_statistics)


def _parameter_gradients(sdy, sdyx, c, M, inv_std, gamma, training, dgamma, dbeta):
    """dbeta[c] = sum dy and dgamma[c] = sum dy xhat, from channel c's sums of dy (sdy) and
    of dy (x - mean) (sdyx); returns (a, k0, k1) of its input gradient
    dx = dy a - k0 - (x - mean) k1, which is base.Backend.batchnorm_backward's formula
    expanded (k0 = k1 = 0 in eval mode), in dgamma's dtype."""
    t = dgamma.dtype.type
    istd = float(inv_std[c])
    dg = sdyx * istd
    dbeta[c] = sdy
    dgamma[c] = dg
    scale = float(gamma[c]) * istd
    if not training:
        return t(scale), t(0), t(0)
    return t(scale), t(scale * sdy / M), t(scale * istd * dg / M)


parameter_gradients = serial(_parameter_gradients)


def _batchnorm_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps,
                       y, mean, inv_std):
    """y = gamma (x - mean) / sqrt(var + eps) + beta per row of x (C, M); mean and inv_std
    (C,) receive the statistics used, and in training the running estimates are updated
    (base.Backend.batchnorm_forward has the formulas)."""
    C, M = x.shape
    t = y.dtype.type
    for c in prange(C):
        row = x[c]
        mu, istd = channel_statistics(row, c, training, momentum, eps, running_mean,
                                      running_var, mean, inv_std)
        mu_t, a, b = t(mu), t(gamma[c] * istd), beta[c]
        out = y[c]
        for m in range(M):
            out[m] = (row[m] - mu_t) * a + b


def _batchnorm_backward(x, dy, mean, inv_std, gamma, training, need_dx, dx, dgamma, dbeta):
    """dbeta = sum dy and dgamma = sum dy xhat per row, xhat = (x - mean) inv_std
    recomputed from x; with ``need_dx`` the input gradient of base.Backend.batchnorm_backward
    into dx (C, M)."""
    C, M = x.shape
    for c in prange(C):
        row = x[c]
        grad = dy[c]
        mu = mean[c]
        zero = mu - mu
        sdy = 0.0
        sdyx = 0.0
        for m0 in range(0, M, SUM_BLOCK):
            bdy = zero
            bdyx = zero
            for m in range(m0, min(m0 + SUM_BLOCK, M)):
                g = grad[m]
                bdy += g
                bdyx += g * (row[m] - mu)
            sdy += bdy
            sdyx += bdyx
        a, k0, k1 = parameter_gradients(sdy, sdyx, c, M, inv_std, gamma, training, dgamma,
                                        dbeta)
        if need_dx:
            out = dx[c]
            for m in range(M):
                out[m] = grad[m] * a - k0 - (row[m] - mu) * k1


def _batchnorm_relu_maxpool2d_forward(x, gamma, beta, running_mean, running_var, training,
                                      momentum, eps, size, mean, inv_std, y, arg):
    """y = maxpool(relu(batchnorm(x))) over size x size windows that tile x (C, H, W, N)
    exactly (pool stride = size); y, arg (C, H / size, W / size, N) as the fused max-pool's
    (pool.py), mean and inv_std as _batchnorm_forward's. The normalised map is never
    stored: each row of windows is normalised into a scratch block that stays in cache
    and pooled there (normalising first: a negative gamma turns maxima into minima)."""
    C, H, W, N = x.shape
    PH, PW = y.shape[1], y.shape[2]
    t = y.dtype.type
    flat = x.reshape(C, H * W * N)
    planes = x.reshape(C, H, W * N)
    for c in prange(C):
        mu, istd = channel_statistics(flat[c], c, training, momentum, eps, running_mean,
                                      running_var, mean, inv_std)
        mu_t, a, b = t(mu), t(gamma[c] * istd), beta[c]
        rows = np.empty((size, W * N), dtype=y.dtype)
        for i2 in range(PH):
            for r in range(size):
                src = planes[c, i2 * size + r]
                dst = rows[r]
                for m in range(W * N):
                    dst[m] = (src[m] - mu_t) * a + b
            for j2 in range(PW):
                if size == 2:
                    pool_window_2x2(rows[0], rows[1], j2 * 2 * N, N, y[c, i2, j2], arg[c, i2, j2])
                else:
                    pool_window(rows, j2 * size * N, N, y[c, i2, j2], arg[c, i2, j2], True)


def _routed(x, dy, arg, c, mu, a, k0, k1, write, dx):
    """Over every position of channel c's windows, g = the pooled gradient routed there
    (dy where arg names the position, else 0): returns (sum g, sum g (x - mu)), and with
    ``write`` sets dx = g a - k0 - (x - mu) k1 there. Each window offset is a loop over
    the images that selects rather than branches, so it vectorizes."""
    PH, PW, N = dy.shape[1], dy.shape[2], dy.shape[3]
    size = x.shape[1] // PH
    zero = dx.dtype.type(0)
    sdy = 0.0
    sdyx = 0.0
    for window in range(PH * PW):
        i2, j2 = window // PW, window % PW
        drow, arow = dy[c, i2, j2], arg[c, i2, j2]  # in cache for the window's positions
        for offset in range(size * size):
            p, q = offset // size, offset % size
            xrow = x[c, i2 * size + p, j2 * size + q]
            out = dx[c, i2 * size + p, j2 * size + q] if write else xrow
            bdy = zero  # this run's sums in the arrays' dtype (module docstring)
            bdyx = zero
            for n in range(N):
                g = drow[n] if arow[n] == offset else zero
                bdy += g
                bdyx += g * (xrow[n] - mu)
                if write:
                    out[n] = g * a - k0 - (xrow[n] - mu) * k1
            sdy += bdy
            sdyx += bdyx
    return sdy, sdyx


routed = serial(_routed)


def _batchnorm_relu_maxpool2d_backward(x, dy, arg, mean, inv_std, gamma, training, need_dx,
                                       dx, dgamma, dbeta):
    """The gradients of _batchnorm_relu_maxpool2d_forward from the pooled dy (C, PH, PW, N):
    the max-pool's dy reaches only each window's argmax (none in windows the ReLU
    zeroed), so dbeta and dgamma sum over those positions, and dx = scale * dy_full - k0 -
    (x - mean) * k1 (base.Backend.batchnorm_backward's formula, expanded) is written in a
    second pass over the windows."""
    C, H, W, N = x.shape
    M = H * W * N
    t = dx.dtype.type
    zero = t(0)
    for c in prange(C):
        mu_t = t(mean[c])
        sdy, sdyx = routed(x, dy, arg, c, mu_t, zero, zero, zero, False, dx)
        a, k0, k1 = parameter_gradients(sdy, sdyx, c, M, inv_std, gamma, training, dgamma,
                                        dbeta)
        if need_dx:
            routed(x, dy, arg, c, mu_t, a, k0, k1, True, dx)


batchnorm_forward = parallel(_batchnorm_forward)
batchnorm_backward = parallel(_batchnorm_backward)
batchnorm_relu_maxpool2d_forward = parallel(_batchnorm_relu_maxpool2d_forward)
batchnorm_relu_maxpool2d_backward = parallel(_batchnorm_relu_maxpool2d_backward)
