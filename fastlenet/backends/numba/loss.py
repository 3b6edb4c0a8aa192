"""Softmax cross-entropy with label smoothing, loss and gradient in one pass
(kernels/loss.cu holds the CUDA version). Serial: a batch's logits are too few to share
between threads.
"""

import numpy as np

from .jit import serial


def _softmax_cross_entropy(logits, labels, smoothing, losses, grad):
    """Per column n of logits (K, N): losses[n] = logsumexp(z) - sum_k q_k z_k and
    grad[:, n] = (softmax(z) - q) / N, with q = (1 - s) onehot(label) + s / K.

    Both from one pass over the shifted logits z - max z, so exp never overflows.
    """
    K, N = logits.shape
    off = smoothing / K
    for n in range(N):
        top = logits[0, n]
        for k in range(1, K):
            top = max(top, logits[k, n])
        total = 0.0
        mean_shift = 0.0
        for k in range(K):
            e = np.exp(logits[k, n] - top)
            grad[k, n] = e
            total += e
            mean_shift += logits[k, n] - top
        label = labels[n]
        losses[n] = (np.log(total) - (1.0 - smoothing) * (logits[label, n] - top)
                     - off * mean_shift)
        for k in range(K):
            grad[k, n] = (grad[k, n] / total - off) / N
        grad[label, n] -= (1.0 - smoothing) / N


softmax_cross_entropy = serial(_softmax_cross_entropy)
