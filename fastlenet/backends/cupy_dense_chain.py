"""The cupy backend's launchers of the fused fully connected chain (kernels/dense_chain.cu).

The chain's forward is one launch and its backward one, plus dense.cu's sum_splits when
the batch spans several blocks (the blocks' weight gradients added in a fixed order).
``FASTLENET_CUDA_BLOCKS=fused`` selects them (cupy_kernel_set.py); otherwise each Linear
and ReLU runs its own kernels. The functions
take the backend and use only its ``xp`` and launch helpers, so they run unchanged on the
CPU emulation of tests/host_cuda.py.
"""

from __future__ import annotations

import numpy as np

from ..errors import ArrayError
from .base import Backend

MAX_LAYERS = 4          # = DC_MAX_LAYERS in dense_chain.cu
SHARED_BYTES = 32768    # = DC_SHARED_BYTES in dense_chain.cu
# images per block, at most (fewer where the widest layer's activations would not fit
# half the shared memory), and threads per block; untimed (docs/cuda.md)
CHAIN_IMAGES = 8
CHAIN_THREADS = 256

_NULL = np.uint64(0)


def images_per_block(widths: list[int], dtype) -> int:
    """How many images a block takes through the chain of ``widths`` (W0, ..., WL): at
    most CHAIN_IMAGES, as many as fit; 0 when the chain does not fit the kernels at all."""
    if not 1 <= len(widths) - 1 <= MAX_LAYERS or max(widths[1:]) < 1:
        return 0
    capacity = SHARED_BYTES // np.dtype(dtype).itemsize // 2
    return min(CHAIN_IMAGES, capacity // max(widths[1:]))


def _kernel(backend, name: str, dtype):
    return backend._function("dense_chain", f"{name}_{'f32' if dtype == np.float32 else 'f64'}")


def _widths(widths: list[int]) -> tuple:
    """W0..W4 as the kernels take them, zeros past the last layer."""
    return tuple(np.int32(v) for v in (*widths, *[0] * (MAX_LAYERS + 1 - len(widths))))


def forward(backend, x, weights, biases):
    """``Backend.dense_chain_forward`` in one launch; the base's layer-by-layer calls
    where the chain does not fit the kernel."""
    backend.check_dense_chain(x, weights, biases)
    widths = [int(x.shape[0])] + [int(w.shape[0]) for w in weights]
    N = int(x.shape[1])
    images = images_per_block(widths, x.dtype)
    if not images or N == 0:
        y, separate = Backend.dense_chain_forward(backend, x, weights, biases)
        return y, (separate, None)
    x, *weights = backend._operands(x, *weights)
    biases = [None if b is None else backend._operands(b)[0] for b in biases]
    xp = backend.xp
    acts = xp.empty((sum(widths[1:-1]), N), dtype=x.dtype)
    y = xp.empty((widths[-1], N), dtype=x.dtype)
    pointers = []
    for i in range(MAX_LAYERS):
        pointers += [weights[i], _NULL if biases[i] is None else biases[i]] \
            if i < len(weights) else [_NULL, _NULL]
    _kernel(backend, "dense_chain_forward", x.dtype)(
        (-(-N // images),), (CHAIN_THREADS,),
        (x, *pointers, acts, y, np.int32(len(weights)), *_widths(widths), np.int32(N),
         np.int32(images)))
    return y, (None, (x, weights, [b is not None for b in biases], acts, widths, images))


def backward(backend, dy, ctx, need_dx: bool = True):
    """``Backend.dense_chain_backward`` of :func:`forward`'s ctx."""
    separate, fused = ctx
    if fused is None:
        return Backend.dense_chain_backward(backend, dy, separate, need_dx)
    x, weights, has_bias, acts, widths, images = fused
    dy = backend._operands(dy, x)[0]  # a TypeError for a dy of another dtype
    xp, N = backend.xp, int(x.shape[1])
    if tuple(dy.shape) != (widths[-1], N):
        raise ArrayError(f"dense_chain_backward: dy must be {(widths[-1], N)}, the chain's "
                         f"output, got shape {tuple(dy.shape)}")
    blocks = -(-N // images)
    total = sum(o * (i + 1) for i, o in zip(widths, widths[1:]))
    part = xp.empty(blocks * total, dtype=x.dtype)
    dx = xp.empty(x.shape, dtype=x.dtype) if need_dx else None
    pointers = list(weights) + [_NULL] * (MAX_LAYERS - len(weights))
    _kernel(backend, "dense_chain_backward", x.dtype)(
        (blocks,), (CHAIN_THREADS,),
        (dy, x, acts, *pointers, _NULL if dx is None else dx, part, np.int32(len(weights)),
         *_widths(widths), np.int32(N), np.int32(images), np.int32(bool(need_dx))))
    grads = part
    if blocks > 1:
        grads = xp.empty(total, dtype=x.dtype)
        backend._launch("dense", "sum_splits", x.dtype, total,
                        (part, _NULL, grads, np.int32(blocks), np.int32(1), np.int32(total)))
    dws, dbs, at = [], [], 0
    for (i, o), bias in zip(zip(widths, widths[1:]), has_bias):
        dws.append(grads[at:at + o * i].reshape(o, i))
        dbs.append(grads[at + o * i:at + o * (i + 1)] if bias else None)
        at += o * (i + 1)
    return dx, dws, dbs
