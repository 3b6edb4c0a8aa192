"""Data augmentation on the fly: random affine maps, elastic distortion and noise.

Every training batch gets fresh random transforms, drawn from the augmenter's own seeded
generator on the backend's device, so a run is reproducible and ``--resume`` continues
the same stream (the generator's state travels in the checkpoint). The whole batch is
transformed at once: the random draws are ``backend.xp`` operations, the smoothing of
the elastic fields is the backend kernel ``separable_filter`` and the resampling the
kernel ``warp_bilinear``. The reference backend's versions are the definitions (matrix
products; one sampling grid per image built by broadcasting, then a bilinear gather);
the numba backend runs both as its own parallel loops, building the grid and gathering
in one pass, with no BLAS call.

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
    no flips (a mirrored 2 is not a 2), small rotations (a 6 turned far is a 9). Elastic
    distortion and noise are off by default: neither raised validation accuracy
    (docs/augmentation.md).
    """

    shift: float = 2.0
    rotate: float = 10.0
    scale: float = 0.1
    shear: float = 0.2
    elastic: float = 0.0
    noise: float = 0.0

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
    ``backend.rng_state``). It draws with ``random`` and ``standard_normal``, which every
    backend's generator offers (NumPy's PCG64, the Philox4x32-10 of cupy and numba).
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
        C, H, W, N = x.shape
        dtype = x.dtype
        coeffs = self._affine(H, W, N, dtype)
        displacement = None
        if s.elastic:
            displacement = self._displacement(H, W, N, dtype)
        out = self.backend.warp_bilinear(x, coeffs, displacement, self.background)
        if s.noise:
            out += dtype.type(self.noise_std) * self._normal((C, H, W, N), dtype)
        return out

    def prepare(self, dtype) -> None:
        """Run the backend's kernels once on a tiny batch (a compiling backend compiles
        them here, not in the first timed epoch); draws no random numbers."""
        xp, dtype = self.backend.xp, np.dtype(dtype)
        x, coeffs = xp.zeros((1, 4, 4, 2), dtype=dtype), xp.zeros((6, 2), dtype=dtype)
        self.backend.warp_bilinear(x, coeffs, None, self.background)
        if self.settings.elastic:
            fields = self.backend.separable_filter(xp.zeros((2, 4, 4, 2), dtype=dtype),
                                                   self._gaussian(4, dtype), self._gaussian(4, dtype))
            self.backend.warp_bilinear(x, coeffs, fields, self.background)

    # ----------------------------------------------------------- random draws
    def _uniform(self, shape, low: float, high: float, dtype) -> Array:
        r = self.rng.random(shape, dtype=dtype)
        return r * dtype.type(high - low) + dtype.type(low)

    def _normal(self, shape, dtype) -> Array:
        """Standard normal values from the backend's generator."""
        return self.rng.standard_normal(shape, dtype=dtype)

    # -------------------------------------------------------------- geometry
    def _affine(self, H: int, W: int, N: int, dtype) -> Array:
        """The random affine maps as ``warp_bilinear``'s coefficients (6, N): output pixel
        (row i, column j) of image n reads the input at
        (coeffs[0] j + coeffs[1] i + coeffs[2], coeffs[3] j + coeffs[4] i + coeffs[5])."""
        xp, s = self.backend.xp, self.settings
        theta = self._uniform(N, -s.rotate, s.rotate, dtype) * dtype.type(math.pi / 180)
        size = self._uniform(N, 1 - s.scale, 1 + s.scale, dtype)
        shear = self._uniform(N, -s.shear, s.shear, dtype)
        tx = self._uniform(N, -s.shift, s.shift, dtype)
        ty = self._uniform(N, -s.shift, s.shift, dtype)
        cos, sin = xp.cos(theta), xp.sin(theta)
        # A = [[cos, -sin], [sin, cos]] @ size @ [[1, shear], [0, 1]] (input -> output);
        # det A = size^2, so A^-1 = [[d, -b], [-c, a]] / size^2, and the source point is
        # A^-1 ((j, i) - centre - t) + centre.
        a, b = size * cos, size * (cos * shear - sin)
        c, d = size * sin, size * (sin * shear + cos)
        det = size * size
        cx, cy = dtype.type((W - 1) / 2), dtype.type((H - 1) / 2)
        u0, v0 = cx + tx, cy + ty  # (j, i) - centre - t = (j - u0, i - v0)
        coeffs = xp.empty((6, N), dtype=dtype)
        coeffs[0], coeffs[1] = d / det, -b / det
        coeffs[3], coeffs[4] = -c / det, a / det
        coeffs[2] = cx - coeffs[0] * u0 - coeffs[1] * v0
        coeffs[5] = cy - coeffs[3] * u0 - coeffs[4] * v0
        return coeffs

    def _displacement(self, H: int, W: int, N: int, dtype) -> Array:
        """alpha * Gaussian-smoothed uniform noise in [-1, 1] (Simard 2003): the x and y
        displacements of every pixel of every image, (2, H, W, N). The smoothing is the
        backend's separable_filter with the banded Gaussian matrix of each axis."""
        fields = self._uniform((2, H, W, N), -1.0, 1.0, dtype)
        out = self.backend.separable_filter(fields, self._gaussian(H, dtype),
                                            self._gaussian(W, dtype))
        out *= dtype.type(self.settings.elastic)
        return out

    def _gaussian(self, size: int, dtype) -> Array:
        key = (size, dtype.str)
        if key not in self._smooth:
            self._smooth[key] = self.backend.asarray(gaussian_matrix(size, ELASTIC_SIGMA), dtype=dtype)
        return self._smooth[key]
