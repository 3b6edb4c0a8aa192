"""Data augmentation on the fly: random affine maps, elastic distortion and noise.

Every training batch gets fresh random transforms, drawn from the augmenter's own seeded
generator on the backend's device, so a run is reproducible and ``--resume`` continues
the same stream (the generator's state travels in the checkpoint). The whole batch is
transformed at once with ``backend.xp`` array operations: one sampling grid per image,
built by broadcasting, then a bilinear gather. There is no loop over images, so the
same code runs on NumPy and CuPy arrays.

Batches are in the trainer's layout, ``(C, H, W, N)``, normalised. Each output pixel
(row i, column j) of image n reads the input at

    (x, y) = A_n^-1 ((j, i) - c - t_n) + c  +  alpha * (smooth(ex_n), smooth(ey_n))[i, j]

with c the image centre, t_n a random shift and A_n = rotation @ scale @ shear (the map
from input to output). The second term is the elastic distortion of Simard, Steinkraus
and Platt (2003): uniform random displacement fields in [-1, 1], smoothed by a Gaussian
of ``sigma`` pixels and scaled by ``alpha``. Points outside the image read background.
Finally Gaussian noise of ``noise`` (in pixel intensity, 1 = black to white) is added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .backends import Backend
from .backends.base import Array
from .checks import is_real
from .errors import ConfigError

ELASTIC_SIGMA = 4.0  # pixels; Simard et al. (2003) found 4 best on MNIST, with alpha 34


@dataclass(frozen=True)
class AugmentSettings:
    """How strong each random transform is; 0 turns one off.

    shift: up to this many pixels in x and in y; rotate: up to this many degrees either
    way; scale: the size changes by a factor in [1 - scale, 1 + scale]; shear: horizontal
    shear factor in [-shear, shear]; elastic: displacement scale alpha in pixels (fields
    smoothed with sigma = ELASTIC_SIGMA); noise: std of additive Gaussian noise in pixel
    intensity (the range black to white is 1). The defaults suit handwritten digits:
    no flips (a mirrored 2 is not a 2), small rotations (a 6 turned far is a 9), and an
    elastic alpha milder than Simard's 34, as it comes on top of the affine maps.
    """

    shift: float = 2.0
    rotate: float = 10.0
    scale: float = 0.1
    shear: float = 0.2
    elastic: float = 16.0
    noise: float = 0.02

    def check(self, option=lambda name: name) -> None:
        """Raise ConfigError naming the first bad setting; ``option(name)`` spells its name."""
        ranges = {"shift": (0, math.inf), "rotate": (0, 180), "scale": (0, 0.9),
                  "shear": (0, 1), "elastic": (0, math.inf), "noise": (0, math.inf)}
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if not is_real(value):
                raise ConfigError(f"{option(name)} must be a finite number, got {value!r}")
            if not low <= value <= high:
                limit = f"in [{low}, {high}]" if high < math.inf else f">= {low}"
                raise ConfigError(f"{option(name)} must be {limit}, got {value}")


def gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """(size, size) matrix G with G @ f = f convolved with a unit-sum Gaussian of ``sigma``
    (truncated at 3 sigma), zero outside the edges (as scipy's mode="constant")."""
    radius = int(math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    offsets = np.arange(size)[None, :] - np.arange(size)[:, None]  # column - row
    inside = np.abs(offsets) <= radius
    return np.where(inside, taps[np.clip(offsets + radius, 0, 2 * radius)], 0.0)


class Augmenter:
    """Random transforms of normalised batches ``(C, H, W, N)`` on one backend.

    ``mean`` and ``std`` are the normalisation of the data (x = (pixel - mean) / std), so
    that the background and the noise level are known in normalised units. ``seed`` seeds
    the augmenter's own generator (``self.rng``, from ``backend.default_rng``; save it with
    ``backend.rng_state``). It draws with ``random`` and ``standard_normal``, which NumPy's
    and CuPy's generators both offer.
    """

    def __init__(self, backend: Backend, settings: AugmentSettings, mean: float, std: float,
                 seed: int = 0):
        settings.check()
        self.backend, self.settings = backend, settings
        self.background = (0.0 - mean) / std  # a 0 (blank) pixel, normalised
        self.noise_std = settings.noise / std
        # an independent stream of the run's seed (the model spawns its own two children)
        stream = np.random.SeedSequence(int(seed), spawn_key=(7,))
        self.rng = backend.default_rng(int(stream.generate_state(1)[0]))
        self._smooth = {}  # (size, dtype) -> device Gaussian matrix

    def __call__(self, x: Array) -> Array:
        """A randomly transformed copy of ``x`` (C, H, W, N), same shape and dtype."""
        s = self.settings
        c, h, w, n = x.shape
        dtype = x.dtype
        src_x, src_y = self._affine_grid(h, w, n, dtype)
        if s.elastic:
            src_x += self._displacement(h, w, n, dtype)
            src_y += self._displacement(h, w, n, dtype)
        out = self._bilinear(x, src_x, src_y)
        if s.noise:
            out += dtype.type(self.noise_std) * self._normal((c, h, w, n), dtype)
        return out

    # ----------------------------------------------------------- random draws
    def _uniform(self, shape, low: float, high: float, dtype) -> Array:
        r = self.rng.random(shape, dtype=dtype)
        return r * dtype.type(high - low) + dtype.type(low)

    def _normal(self, shape, dtype) -> Array:
        """Standard normal values (NumPy's and CuPy's generators both draw them)."""
        return self.rng.standard_normal(shape, dtype=dtype)

    # -------------------------------------------------------------- geometry
    def _affine_grid(self, h: int, w: int, n: int, dtype):
        """Source coordinates (x, y), each (H, W, N), of the random affine maps."""
        xp, s = self.backend.xp, self.settings
        theta = self._uniform(n, -s.rotate, s.rotate, dtype) * dtype.type(math.pi / 180)
        size = self._uniform(n, 1 - s.scale, 1 + s.scale, dtype)
        shear = self._uniform(n, -s.shear, s.shear, dtype)
        tx = self._uniform(n, -s.shift, s.shift, dtype)
        ty = self._uniform(n, -s.shift, s.shift, dtype)
        cos, sin = xp.cos(theta), xp.sin(theta)
        # A = [[cos, -sin], [sin, cos]] @ size @ [[1, shear], [0, 1]] (input -> output);
        # det A = size^2, so A^-1 = [[d, -b], [-c, a]] / size^2.
        a, b = size * cos, size * (cos * shear - sin)
        cc, d = size * sin, size * (sin * shear + cos)
        det = size * size
        cy, cx = (h - 1) / 2, (w - 1) / 2
        u = xp.arange(w, dtype=dtype)[None, :, None] - dtype.type(cx) - tx  # (1, W, N)
        v = xp.arange(h, dtype=dtype)[:, None, None] - dtype.type(cy) - ty  # (H, 1, N)
        src_x = (d / det) * u - (b / det) * v + dtype.type(cx)
        src_y = (a / det) * v - (cc / det) * u + dtype.type(cy)
        return src_x, src_y

    def _displacement(self, h: int, w: int, n: int, dtype) -> Array:
        """alpha * Gaussian-smoothed uniform noise in [-1, 1], (H, W, N) (Simard 2003).

        The smoothing is separable: G_H @ field along H, then along W, each a matrix
        product with the banded Gaussian matrix of that axis.
        """
        xp = self.backend.xp
        field = self._uniform((h, w, n), -1.0, 1.0, dtype)
        gh, gw = self._gaussian(h, dtype), self._gaussian(w, dtype)
        field = (gh @ field.reshape(h, w * n)).reshape(h, w, n)
        field = xp.matmul(gw, field)  # (W, W) @ (H, W, N): along W for every row
        field *= dtype.type(self.settings.elastic)
        return field

    def _gaussian(self, size: int, dtype) -> Array:
        key = (size, dtype.str)
        if key not in self._smooth:
            self._smooth[key] = self.backend.asarray(gaussian_matrix(size, ELASTIC_SIGMA), dtype=dtype)
        return self._smooth[key]

    def _bilinear(self, x: Array, src_x: Array, src_y: Array) -> Array:
        """x (C, H, W, N) read at (src_x, src_y) (H, W, N) with bilinear weights;
        points outside the image read background. Overwrites src_x and src_y.

        The image gets a one-pixel border of background and the coordinates are clipped
        into it, so every corner of every point is a valid index and no mask is needed.
        """
        xp = self.backend.xp
        c, h, w, n = x.shape
        background = x.dtype.type(self.background)
        padded = xp.full((c, h + 2, w + 2, n), background, dtype=x.dtype)
        padded[:, 1:-1, 1:-1] = x
        padded = padded.reshape(c, -1)
        # Padded coordinates: the image spans [1, w], the border 0 and w + 1. Computed in
        # place, as these (H, W, N) arrays are the largest temporaries of a batch.
        fx, fy = src_x, src_y
        fx += 1
        fy += 1
        xp.clip(fx, 0, w + 1, out=fx)
        xp.clip(fy, 0, h + 1, out=fy)
        x0, y0 = xp.floor(fx), xp.floor(fy)
        xp.minimum(x0, w, out=x0)
        xp.minimum(y0, h, out=y0)
        fx -= x0
        fy -= y0
        y0 *= w + 2  # the pixel's offset in a padded image, exact in floats
        y0 += x0
        index = y0.astype(np.intp)
        index *= n
        index += xp.arange(n)
        row = (w + 2) * n  # index step of one row down
        top = xp.take(padded, index, axis=1)
        top += fx * (xp.take(padded, index + n, axis=1) - top)
        index += row
        bottom = xp.take(padded, index, axis=1)
        bottom += fx * (xp.take(padded, index + n, axis=1) - bottom)
        bottom -= top
        bottom *= fy
        top += bottom
        return top
