"""The cupy backend's fused conv blocks (kernels/conv_block.cu): conv + bias + ReLU +
max-pool in one launch forward and one backward, run with ``FASTLENET_CUDA_BLOCKS=fused``
(cupy_kernel_set.py); otherwise the chain of conv2d.cu and pool.cu kernels runs. A shape
whose tiles do not fit a block's shared memory runs the separate kernels. The launchers
take the backend (its ``xp``, ``_function`` and ``_operands``), so this module imports
no CuPy of its own.
"""

from __future__ import annotations

import numpy as np

from ..errors import ArrayError
from .base import check_window_options, window_out_size
from .cupy_kernel_set import kernel_set
# Must equal BLOCK_SMEM_BYTES and BLOCK_KR in conv_block.cu: the shared array every
# block's tiles are planned into, and the most output channels one thread holds.
SMEM_BYTES = 40960
BLOCK_KR = 8
# Launch shapes (untimed starting points: docs/cuda.md, Fused conv blocks):
BLOCK_THREADS = 256
BLOCK_IMAGES = 8       # images per block (fewer where the tiles would not fit)
# the forward's threads each hold up to BLOCK_KR output channels, fewer while that leaves
# fewer than FUSED_THREADS threads (as CONV_THREADS does for conv2d.cu's forward)
FUSED_THREADS = 32768
DX_ROWS = 2            # input rows per input-gradient block


class FusedContext(tuple):
    """The chain's ctx ``(conv_ctx, pool_ctx)``, so the separate backward can read it,
    plus the device counter the fused backward's last block takes its ticket from."""

    counter = None


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _halvings(n: int):
    while n >= 1:
        yield n
        n //= 2


def _tile_cols(PW, ps, size, stride, KW) -> int:
    """Padded input columns that a row of windows reaches."""
    return ((PW - 1) * ps + size - 1) * stride + KW


def plan_forward(C, K, N, KH, KW, stride, PH, PW, size, ps, itemsize):
    """(NI, PB, KG, KR) for conv_block_forward, or None when no tile fits: KR channels
    per thread while that leaves FUSED_THREADS threads; then blocks of about one to two
    BLOCK_THREADS outputs, by splitting the channels into groups of KG or taking PB
    pooled rows per block."""
    words = SMEM_BYTES // itemsize
    TC = _tile_cols(PW, ps, size, stride, KW)
    kr = min(BLOCK_KR, K)
    while kr > 1 and _ceil_div(K, kr) * PH * PW * N < FUSED_THREADS:
        kr = _ceil_div(kr, 2)

    def fits(ni, pb, kg):
        tile = C * ((pb - 1) * ps + size - 1) * stride + C * KH  # C * TR rows
        return kg * C * KH * KW + tile * TC * (ni | 1) <= words

    def outputs(ni, pb, kg):
        return _ceil_div(kg, kr) * pb * PW * ni

    for ni in _halvings(min(N, BLOCK_IMAGES)):
        if not fits(ni, 1, kr):
            continue
        kg = _ceil_div(K, kr) * kr
        while kg > kr and (not fits(ni, 1, kg) or outputs(ni, 1, kg) > 2 * BLOCK_THREADS):
            kg = _ceil_div(_ceil_div(kg, kr), 2) * kr
        pb = 1
        while pb < PH and outputs(ni, pb, kg) < BLOCK_THREADS and fits(ni, pb + 1, kg):
            pb += 1
        return ni, pb, min(kg, K), kr
    return None


def _conv_rows(h0, h1, KH, stride, pad, OH) -> int:
    """How many conv output rows have a tap in input rows [h0, h1) (conv_block.cu's GR)."""
    lo = h0 + pad - KH + 1
    i0 = 0 if lo <= 0 else _ceil_div(lo, stride)
    return max(0, min(OH - 1, (h1 - 1 + pad) // stride) - i0 + 1)


def plan_backward(C, H, K, N, KH, KW, OH, OW, stride, pad, PW, size, ps, itemsize, need_dx):
    """(NI, PB, NIX, HB) for conv_block_backward (NIX, HB None without dx), or None."""
    words = SMEM_BYTES // itemsize
    TR, TC = (size - 1) * stride + KH, _tile_cols(PW, ps, size, stride, KW)
    ni = next((n for n in _halvings(min(N, BLOCK_IMAGES))
               if C * TR * TC * (n | 1) + 2 * K * PW * (n | 1) <= words), None)
    if ni is None:
        return None
    if not need_dx:
        return ni, 1, None, None
    hb = min(H, DX_ROWS)
    rows = max(_conv_rows(h0, min(H, h0 + hb), KH, stride, pad, OH) for h0 in range(0, H, hb))
    nix = next((n for n in _halvings(min(N, BLOCK_IMAGES))
                if K * C * KH * KW + K * rows * OW * (n | 1) <= words), None)
    return None if nix is None else (ni, 1, nix, hb)


def forward(backend, x, w, b, stride: int, pad: int, size: int, pool_stride: int):
    """``(y, ctx)`` of conv2d_relu_maxpool2d_forward from one launch, or None where the
    separate kernels run (that kernel set chosen, or a shape the tiles do not fit)."""
    OH, OW = backend.check_conv2d(x, w, b, stride, pad)
    check_window_options("pool2d", "size", size, pool_stride, 0)
    PH, PW = window_out_size(OH, size, pool_stride), window_out_size(OW, size, pool_stride)
    if kernel_set() != "fused":
        return None
    C, H, W, N = x.shape
    K, _, KH, KW = w.shape
    plan = plan_forward(C, K, N, KH, KW, stride, PH, PW, size, pool_stride, x.dtype.itemsize) \
        if min(C, K, N) > 0 else None
    if plan is None:
        return None
    NI, PB, KG, KR = plan
    x, w, *bias = backend._operands(x, w, *(() if b is None else (b,)))
    xp, i32 = backend.xp, np.int32
    y = xp.empty((K, PH, PW, N), dtype=x.dtype)
    arg = xp.empty((K, PH, PW, N), dtype=np.int32)
    counter = xp.empty(1, dtype=np.int32)  # zeroed by the forward, for the backward
    dims = tuple(map(i32, (C, H, W, N, K, KH, KW, OH, OW, stride, pad, PH, PW, size,
                           pool_stride)))
    blocks = _ceil_div(N, NI) * _ceil_div(PH, PB) * _ceil_div(K, KG)
    backend._function("conv_block", f"conv_block_forward_{_suffix(x.dtype)}")(
        (blocks,), (BLOCK_THREADS,),
        (x, w, bias[0] if bias else np.uint64(0), y, arg, counter) + dims
        + tuple(map(i32, (NI, PB, KG, KR))))
    conv_ctx = (x, w, b is not None, dims[:11])
    pool_ctx = (arg, (K, OH, OW, N), tuple(map(i32, (K, OH, OW, N, PH, PW, size, pool_stride))))
    ctx = FusedContext((conv_ctx, pool_ctx))
    ctx.counter = counter
    return y, ctx


def backward(backend, dy, ctx, need_dx: bool):
    """``(dx or None, dw, db or None)`` from one launch, or None where the separate kernels
    run (a ctx of theirs, or tiles that do not fit)."""
    if not isinstance(ctx, FusedContext):
        return None
    (x, w, has_bias, conv_dims), (arg, _, pool_dims) = ctx
    C, H, W, N, K, KH, KW, OH, OW, stride, pad = (int(d) for d in conv_dims)
    PH, PW, size, ps = (int(d) for d in pool_dims[4:])
    plan = plan_backward(C, H, K, N, KH, KW, OH, OW, stride, pad, PW, size, ps,
                         x.dtype.itemsize, need_dx)
    if plan is None:
        return None
    NI, PB, NIX, HB = plan
    dy = backend._operands(dy, x)[0]
    if tuple(dy.shape) != (K, PH, PW, N):
        raise ArrayError(f"conv2d_relu_maxpool2d_backward: dy must be {(K, PH, PW, N)}, the "
                         f"block's output, got shape {tuple(dy.shape)}")
    xp, i32 = backend.xp, np.int32
    wtotal = K * C * KH * KW
    wblocks = _ceil_div(N, NI) * _ceil_div(PH, PB)
    part = xp.empty(wblocks * (wtotal + K), dtype=x.dtype)
    grads = xp.empty(wtotal + K, dtype=x.dtype)
    dx = xp.empty(x.shape, dtype=x.dtype) if need_dx else None
    blocks = wblocks + (_ceil_div(N, NIX) * _ceil_div(H, HB) if need_dx else 0)
    dims = tuple(map(i32, (C, H, W, N, K, KH, KW, OH, OW, stride, pad, PH, PW, size, ps)))
    backend._function("conv_block", f"conv_block_backward_{_suffix(x.dtype)}")(
        (blocks,), (BLOCK_THREADS,),
        (dy, arg, x, w, np.uint64(0) if dx is None else dx, part, ctx.counter, grads) + dims
        + tuple(map(i32, (NI, PB, wblocks, NIX or 0, HB or 0))))
    return dx, grads[:wtotal].reshape(w.shape), grads[wtotal:] if has_bias else None


def _suffix(dtype) -> str:
    return {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}[np.dtype(dtype)]
