"""Pooling kernels: max-pool with the first-maximum rule (fused with the ReLU on request)
and average pooling, forward and backward (kernels/pool.cu holds the CUDA versions).

Inner loops run over the images of one (c, row, column) position through row views
(``x[c, r, col]``, N contiguous values), which Numba vectorizes. The window routines are
shared with the fused convolution block (conv2d.py).
"""

from numba import prange

from .jit import parallel, serial


def _replaces(v, best):
    """Whether a window's running maximum ``best`` gives way to ``v``: v is larger, or a
    NaN (which then stays). The rule of every max-pool here."""
    return (v > best) | ((v != v) & (best == best))


def _pool_window_2x2(top, bottom, start, N, yrow, arow):
    """One 2x2 window of every image, from two rows of a convolution's output whose
    window columns begin at ``start``: yrow = relu(max), arow = offset of the first max
    (4 where the ReLU zeroes it). All four values of an image are compared in registers
    and written once (the general loop below rewrites yrow per window position)."""
    a0, a1 = top[start:start + N], top[start + N:start + 2 * N]
    a2, a3 = bottom[start:start + N], bottom[start + N:start + 2 * N]
    for n in range(N):  # slices, and one select per value: both needed to vectorize
        best = a0[n]
        t = 0
        v = a1[n]
        take = replaces(v, best)
        best = v if take else best
        t = 1 if take else t
        v = a2[n]
        take = replaces(v, best)
        best = v if take else best
        t = 2 if take else t
        v = a3[n]
        take = replaces(v, best)
        best = v if take else best
        t = 3 if take else t
        alive = (best > 0) | (best != best)
        yrow[n] = best if alive else 0
        arow[n] = t if alive else 4


def _pool_window(rows, start, N, yrow, arow, relu):
    """One size x size window of every image (size = len(rows)), its columns beginning at
    ``start`` in each of ``rows``: yrow = the max, arow = the offset p*size + q of the first
    maximum in row-major order (a strict '>' keeps the earlier one on ties; a NaN wins and
    stays, so it reaches the loss). With ``relu`` yrow = max(max, 0), and windows whose max
    is <= 0 get the offset size*size, which the backward routes nowhere. One window
    position at a time, each a pass over the images."""
    size = rows.shape[0]
    first = rows[0, start:start + N]
    for n in range(N):
        yrow[n] = first[n]
        arow[n] = 0
    for p in range(size):
        for q in range(size):
            if p == 0 and q == 0:
                continue
            t = p * size + q
            xrow = rows[p, start + q * N:start + (q + 1) * N]
            for n in range(N):  # branch-free: selects vectorize, branches did not
                v = xrow[n]
                best = yrow[n]
                take = replaces(v, best)
                yrow[n] = v if take else best
                arow[n] = t if take else arow[n]
    if relu:
        dead = size * size
        for n in range(N):
            alive = (yrow[n] > 0) | (yrow[n] != yrow[n])
            arow[n] = arow[n] if alive else dead
            yrow[n] = yrow[n] if alive else 0


replaces = serial(_replaces)
pool_window_2x2 = serial(_pool_window_2x2)
pool_window = serial(_pool_window)


def _maxpool2d_forward(x, size, stride, relu, y, arg):
    """y[c, i, j, n] = max of the window at (i*s, j*s) and arg its first maximum's offset,
    as _pool_window defines them (with ``relu``, of the ReLU's output). x contiguous.

    One task per output row (c, i).
    """
    C, OH, OW, N = y.shape
    H, W = x.shape[1], x.shape[2]
    planes = x.reshape(C, H, W * N)
    for task in prange(C * OH):
        c = task // OH
        i = task % OH
        rows = planes[c, i * stride:i * stride + size]
        for j in range(OW):
            pool_window(rows, j * stride * N, N, y[c, i, j], arg[c, i, j], relu)


def _maxpool2d_backward(dy, arg, size, dx):
    """dx[c, i*size + p, j*size + q, n] = dy[c, i, j, n] if arg[c, i, j, n] == p*size + q,
    else 0, for windows that tile dx exactly (stride == size, no leftover rows or
    columns, as in LeNet-5): every position of dx belongs to one window and is written
    once. One task per output row (c, i).
    """
    C, OH, OW, N = dy.shape
    for task in prange(C * OH):
        c = task // OH
        i = task % OH
        for j in range(OW):
            drow = dy[c, i, j]
            arow = arg[c, i, j]
            for p in range(size):
                for q in range(size):
                    t = p * size + q
                    xrow = dx[c, i * size + p, j * size + q]
                    for n in range(N):
                        xrow[n] = drow[n] if arow[n] == t else 0


def _maxpool2d_backward_general(dy, arg, size, stride, dx):
    """The same routing for any windows (overlapping, gaps, leftovers): one task per
    channel zeroes its plane and adds, so overlapping windows accumulate race-free. A
    kernel of its own, so the common case compiles without it."""
    C, OH, OW, N = dy.shape
    H, W = dx.shape[1], dx.shape[2]
    for c in prange(C):
        plane = dx[c].reshape(H * W * N)
        for m in range(H * W * N):
            plane[m] = 0
        for i in range(OH):
            for j in range(OW):
                drow = dy[c, i, j]
                arow = arg[c, i, j]
                for p in range(size):
                    for q in range(size):
                        t = p * size + q
                        xrow = dx[c, i * stride + p, j * stride + q]
                        for n in range(N):
                            xrow[n] += drow[n] if arow[n] == t else 0


def _avgpool2d_forward(x, size, stride, y):
    """y[c, i, j, n] = mean of the size x size window at (i*s, j*s); a task per row (c, i)."""
    C, OH, OW, N = y.shape
    scale = y.dtype.type(1.0 / (size * size))
    for task in prange(C * OH):
        c = task // OH
        i = task % OH
        for j in range(OW):
            yrow = y[c, i, j]
            for n in range(N):
                yrow[n] = 0
            for p in range(size):
                for q in range(size):
                    xrow = x[c, i * stride + p, j * stride + q]
                    for n in range(N):
                        yrow[n] += xrow[n]
            for n in range(N):
                yrow[n] *= scale


def _avgpool2d_backward(dy, size, stride, dx):
    """dx[c, i*s + p, j*s + q, n] += dy[c, i, j, n] / size**2, one task per channel."""
    C, OH, OW, N = dy.shape
    H, W = dx.shape[1], dx.shape[2]
    scale = dy.dtype.type(1.0 / (size * size))
    for c in prange(C):
        plane = dx[c].reshape(H * W * N)
        for m in range(H * W * N):
            plane[m] = 0
        for i in range(OH):
            for j in range(OW):
                drow = dy[c, i, j]
                for p in range(size):
                    for q in range(size):
                        xrow = dx[c, i * stride + p, j * stride + q]
                        for n in range(N):
                            xrow[n] += scale * drow[n]


maxpool2d_forward = parallel(_maxpool2d_forward)
maxpool2d_backward = parallel(_maxpool2d_backward)
maxpool2d_backward_general = parallel(_maxpool2d_backward_general)
avgpool2d_forward = parallel(_avgpool2d_forward)
avgpool2d_backward = parallel(_avgpool2d_backward)
