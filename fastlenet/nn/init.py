"""Weight initialisers, run on the host so every backend starts from identical weights.

Each initialiser is a function ``(shape, fan_in, fan_out, rng) -> numpy.ndarray`` (float64)
drawing from a seeded ``numpy.random.Generator``; the layer then copies the result to its
device in its dtype. For a conv weight (K, C, KH, KW): fan_in = C*KH*KW, fan_out = K*KH*KW;
for a linear weight (OUT, IN): fan_in = IN, fan_out = OUT. Biases start at zero.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import ConfigError


def he_normal(shape: tuple[int, ...], fan_in: int, fan_out: int,
              rng: np.random.Generator) -> np.ndarray:
    """He / Kaiming normal (He et al. 2015), fan-in mode, for ReLU networks.

    w ~ N(0, std^2), std = gain / sqrt(fan_in) with gain = sqrt(2): a ReLU zeroes half
    of its inputs, and the factor 2 keeps the activations' variance constant with depth.
    """
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)


def glorot_uniform(shape: tuple[int, ...], fan_in: int, fan_out: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Glorot / Xavier uniform (Glorot & Bengio 2010), for tanh and sigmoid networks.

    w ~ U(-a, a), a = sqrt(6 / (fan_in + fan_out)): variance 2 / (fan_in + fan_out), the
    compromise between keeping forward activations and backward gradients steady.
    """
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def lecun_normal(shape: tuple[int, ...], fan_in: int, fan_out: int,
                 rng: np.random.Generator) -> np.ndarray:
    """LeCun normal (LeCun et al. 1998, "Efficient BackProp"), for tanh networks.

    w ~ N(0, std^2), std = 1 / sqrt(fan_in): unit-variance inputs give pre-activations of
    unit variance, where tanh is near-linear but not saturated.
    """
    return rng.normal(0.0, 1.0 / np.sqrt(fan_in), size=shape)


Initializer = Callable[[tuple, int, int, np.random.Generator], np.ndarray]

INITIALIZERS: dict[str, Initializer] = {
    "he": he_normal,
    "glorot": glorot_uniform,
    "lecun": lecun_normal,
}


def get_initializer(name: str) -> Initializer:
    """The initialiser called ``name``; ConfigError listing the choices otherwise."""
    try:
        return INITIALIZERS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown initialiser {name!r}; choose one of: "
                          f"{', '.join(INITIALIZERS)}") from None
