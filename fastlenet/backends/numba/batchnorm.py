"""Batch normalisation kernels, forward and backward, alone and fused with the ReLU and
max-pool that follow it (kernels/batchnorm.cu holds the CUDA versions of the first two).

One task per channel (row of x (C, M)) in each direction, so each direction is one
parallel region: the row's reduction (sum and sum of squares together forward; the sums
of dy and dy * xhat together backward) and then its element-wise pass, while the row is
still in cache. Sums run in float64 whatever the arrays' dtype, and the forward's
squares are taken about the row's first value, so the one-pass variance loses nothing
to cancellation when the mean is large against the spread.
"""

import math

import numpy as np
from numba import prange

from .jit import parallel, serial
from .pool import pool_window, pool_window_2x2


def _channel_statistics(row, c, training, momentum, eps, running_mean, running_var):
    """(mean, 1 / sqrt(var + eps)) of channel c, whose values are ``row``: the batch's in
    training (and the running estimates updated), else the running estimates."""
    if training:
        M = row.shape[0]
        shift = float(row[0])
        s = 0.0
        ss = 0.0
        for m in range(M):
            d = row[m] - shift
            s += d
            ss += d * d
        offset = s / M
        var = max(ss / M - offset * offset, 0.0)
        mu = shift + offset
        running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mu
        running_var[c] = (1.0 - momentum) * running_var[c] + momentum * var * M / (M - 1)
    else:
        mu = float(running_mean[c])
        var = float(running_var[c])
    return mu, 1.0 / math.sqrt(var + eps)


channel_statistics = serial(_channel_statistics)


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
                                      running_var)
        mean[c] = mu
        inv_std[c] = istd
        mu_t = t(mu)
        a = t(gamma[c] * istd)
        b = beta[c]
        out = y[c]
        for m in range(M):
            out[m] = (row[m] - mu_t) * a + b


def _batchnorm_backward(x, dy, mean, inv_std, gamma, training, need_dx, dx, dgamma, dbeta):
    """dbeta = sum dy and dgamma = sum dy xhat per row, xhat = (x - mean) inv_std
    recomputed from x; with ``need_dx`` the input gradient of base.Backend.batchnorm_backward
    into dx (C, M)."""
    C, M = x.shape
    t = dx.dtype.type
    for c in prange(C):
        row = x[c]
        grad = dy[c]
        mu = mean[c]
        sdy = 0.0
        sdyx = 0.0
        for m in range(M):
            g = grad[m]
            sdy += g
            sdyx += g * (row[m] - mu)
        istd = float(inv_std[c])
        dg = sdyx * istd
        dbeta[c] = sdy
        dgamma[c] = dg
        if need_dx:
            scale = float(gamma[c]) * istd
            out = dx[c]
            a = t(scale)
            if training:
                # scale (dy - sdy / M - xhat dg / M), with xhat = (x - mu) istd
                k0 = t(scale * sdy / M)
                k1 = t(scale * istd * dg / M)
                for m in range(M):
                    out[m] = grad[m] * a - k0 - (row[m] - mu) * k1
            else:
                for m in range(M):
                    out[m] = grad[m] * a


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
                                      running_var)
        mean[c] = mu
        inv_std[c] = istd
        mu_t = t(mu)
        a = t(gamma[c] * istd)
        b = beta[c]
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


def _batchnorm_relu_maxpool2d_backward(x, dy, arg, mean, inv_std, gamma, training, need_dx,
                                       dx, dgamma, dbeta):
    """The gradients of _batchnorm_relu_maxpool2d_forward from the pooled dy (C, PH, PW, N):
    the max-pool's dy reaches only each window's argmax (none in windows the ReLU
    zeroed), so dbeta and dgamma sum over those positions, and dx = scale * dy_full - k0 -
    (x - mean) * k1 (base.Backend.batchnorm_backward's formula, expanded) is written in one
    pass over the windows. Loops over each window offset t select with ``arg == t`` rather
    than branch, so they vectorize over the images."""
    C, H, W, N = x.shape
    PH, PW = dy.shape[1], dy.shape[2]
    size = H // PH
    M = H * W * N
    t = dx.dtype.type
    zero = t(0)
    for c in prange(C):
        mu_t = t(mean[c])
        sdy = 0.0
        sdyx = 0.0
        for i2 in range(PH):
            for j2 in range(PW):
                drow = dy[c, i2, j2]
                arow = arg[c, i2, j2]
                for p in range(size):
                    for q in range(size):
                        offset = p * size + q
                        xrow = x[c, i2 * size + p, j2 * size + q]
                        for n in range(N):
                            g = drow[n] if arow[n] == offset else zero
                            sdy += g
                            sdyx += g * (xrow[n] - mu_t)
        istd = float(inv_std[c])
        dg = sdyx * istd
        dbeta[c] = sdy
        dgamma[c] = dg
        if not need_dx:
            continue
        scale = float(gamma[c]) * istd
        a = t(scale)
        k0 = t(scale * sdy / M) if training else zero
        k1 = t(scale * istd * dg / M) if training else zero
        for i2 in range(PH):
            for j2 in range(PW):
                drow = dy[c, i2, j2]
                arow = arg[c, i2, j2]
                for p in range(size):
                    for q in range(size):
                        offset = p * size + q
                        xrow = x[c, i2 * size + p, j2 * size + q]
                        out = dx[c, i2 * size + p, j2 * size + q]
                        for n in range(N):
                            g = drow[n] if arow[n] == offset else zero
                            out[n] = g * a - k0 - (xrow[n] - mu_t) * k1


batchnorm_forward = parallel(_batchnorm_forward)
batchnorm_backward = parallel(_batchnorm_backward)
batchnorm_relu_maxpool2d_forward = parallel(_batchnorm_relu_maxpool2d_forward)
batchnorm_relu_maxpool2d_backward = parallel(_batchnorm_relu_maxpool2d_backward)
