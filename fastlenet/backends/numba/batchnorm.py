"""Batch normalisation kernels, forward and backward (kernels/batchnorm.cu holds the CUDA
versions).

One task per channel (row of x (C, M)) in each direction, so each direction is one
parallel region: the row's reduction (sum and sum of squares together forward; the sums
of dy and dy * xhat together backward) and then its element-wise pass, while the row is
still in cache. Sums run in float64 whatever the arrays' dtype, and the forward's
squares are taken about the row's first value, so the one-pass variance loses nothing
to cancellation when the mean is large against the spread.
"""

import math

from numba import prange

from .jit import parallel


def _batchnorm_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps,
                       y, mean, inv_std):
    """y = gamma (x - mean) / sqrt(var + eps) + beta per row of x (C, M); mean and inv_std
    (C,) receive the statistics used, and in training the running estimates are updated
    (base.Backend.batchnorm_forward has the formulas)."""
    C, M = x.shape
    t = y.dtype.type
    for c in prange(C):
        row = x[c]
        if training:
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
        istd = 1.0 / math.sqrt(var + eps)
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


batchnorm_forward = parallel(_batchnorm_forward)
batchnorm_backward = parallel(_batchnorm_backward)
