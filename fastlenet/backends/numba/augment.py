"""The augmenter's kernels: the separable filter that smooths elastic displacement
fields, and the bilinear warp of every image by its own affine map and displacement.
(On the GPU both are the reference's array maths.)
"""

import numpy as np
from numba import prange

from .conv2d import row_multiply_add, row_multiply_add2
from .jit import parallel


def _separable_filter(a, gh, gw, tmp, out):
    """out[f, :, :, n] = gh @ a[f, :, :, n] @ gw.T for every map f and image n.

    Two passes of the convolution's row step, each vectorized over the images and each
    filling two outputs per input load: along H, rows (f, i) and (f, i + 1) of tmp (W*N
    contiguous values) are sums of a's rows (f, p) weighted by gh[i, p] and gh[i + 1, p];
    along W, pixels (f, i, j) and (f, i, j + 1) of out (N values each) are sums of tmp's
    pixels (f, i, q) weighted by gw[j, q] and gw[j + 1, q].
    """
    F, H, W, N = a.shape
    run = W * N
    af = a.reshape(F * H * run)
    tf = tmp.reshape(F * H * run)
    of = out.reshape(F * H * run)
    row_pairs = (H + 1) // 2
    for task in prange(F * row_pairs):
        f = task // row_pairs
        i = (task % row_pairs) * 2
        row0 = tf[(f * H + i) * run:(f * H + i + 1) * run]
        for m in range(run):
            row0[m] = 0
        if i + 1 < H:
            row1 = tf[(f * H + i + 1) * run:(f * H + i + 2) * run]
            for m in range(run):
                row1[m] = 0
            row_multiply_add2(row0, row1, af, f * H * run, run, gh[i], gh[i + 1])
        else:
            row_multiply_add(row0, af, f * H * run, run, gh[i])
    for task in prange(F * H):
        row = tf[task * run:(task + 1) * run]
        for j in range(0, W, 2):
            pixel0 = of[task * run + j * N:task * run + (j + 1) * N]
            for n in range(N):
                pixel0[n] = 0
            if j + 1 < W:
                pixel1 = of[task * run + (j + 1) * N:task * run + (j + 2) * N]
                for n in range(N):
                    pixel1[n] = 0
                row_multiply_add2(pixel0, pixel1, row, 0, N, gw[j], gw[j + 1])
            else:
                row_multiply_add(pixel0, row, 0, N, gw[j])


def _warp_bilinear(padded, coeffs, displacement, out):
    """out[c, i, j, n] = padded[c] read bilinearly at image n's source point for (i, j),
    as defined by base.Backend.warp_bilinear: the affine map coeffs[:, n] plus
    displacement[:, i, j, n] (a (2, H, W, N) array of zeros when there is none), in the
    coordinates of ``padded`` (C, H + 2, W + 2, N), the images with a one-pixel border of
    background, clipped into it.

    For each output pixel (i, j), a first loop over the images builds their source
    points (the top-left neighbour's index and the two weights), then a loop per channel
    gathers the four neighbours: with the border every neighbour is a valid index, so
    neither loop branches and both vectorize (the second with gathers; one loop doing both
    ran scalar). Constants are in the arrays' dtype, so float32 arithmetic stays float32.
    One task per output row i.
    """
    C, H, W, N = out.shape
    row = (W + 2) * N  # index step of one row down in padded
    plane = (H + 2) * row
    flat = padded.reshape(C * plane)
    T = out.dtype.type
    zero, one = T(0), T(1)
    x_border, y_border = T(W + 1), T(H + 1)
    x_last, y_last = T(W), T(H)
    for i in prange(H):
        index = np.empty(N, np.int64)
        wx = np.empty(N, out.dtype)
        wy = np.empty(N, out.dtype)
        fi = T(i)
        for j in range(W):
            fj = T(j)
            for n in range(N):  # padded coordinates: the image spans [1, W], the border 0, W + 1
                fx = coeffs[0, n] * fj + coeffs[1, n] * fi + coeffs[2, n] + displacement[0, i, j, n] + one
                fy = coeffs[3, n] * fj + coeffs[4, n] * fi + coeffs[5, n] + displacement[1, i, j, n] + one
                fx = min(max(fx, zero), x_border)
                fy = min(max(fy, zero), y_border)
                x0 = min(np.floor(fx), x_last)
                y0 = min(np.floor(fy), y_last)
                wx[n] = fx - x0
                wy[n] = fy - y0
                index[n] = (np.int64(y0) * (W + 2) + np.int64(x0)) * N + n
            for c in range(C):
                src = flat[c * plane:(c + 1) * plane]
                pixel = out[c, i, j]
                for n in range(N):
                    k = index[n]
                    top = src[k] + wx[n] * (src[k + N] - src[k])
                    bottom = src[k + row] + wx[n] * (src[k + row + N] - src[k + row])
                    pixel[n] = top + wy[n] * (bottom - top)


# Serial kernels: the batch copy, the loss and one Adam update are microseconds of work,
# less than waking the thread pool costs.


separable_filter = parallel(_separable_filter)
warp_bilinear = parallel(_warp_bilinear)
