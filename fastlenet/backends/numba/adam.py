"""The fused AdamW update over a flat parameter buffer (kernels/adam.cu holds the CUDA
version). Serial: one pass over a small model's parameters costs less than waking the
thread pool.
"""

import numpy as np

from .jit import serial


def _adam_update(p, g, m, v, beta1, rest1, beta2, rest2, eps, shrink, step_size, inv_bias2):
    """AdamW on flat arrays, in place, in one pass (formula in base.Backend.adam_update),
    with the scalar factors precomputed: rest = 1 - beta, shrink = 1 - lr * wd,
    step_size = lr / (1 - beta1^t), inv_bias2 = 1 / (1 - beta2^t)."""
    for t in range(p.shape[0]):
        gt = g[t]
        mt = beta1 * m[t] + rest1 * gt
        vt = beta2 * v[t] + rest2 * (gt * gt)
        m[t] = mt
        v[t] = vt
        p[t] = p[t] * shrink - step_size * mt / (np.sqrt(vt * inv_bias2) + eps)


adam_update = serial(_adam_update)
