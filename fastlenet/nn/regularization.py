"""Layers that regularise training: Dropout and BatchNorm."""

from __future__ import annotations

import numpy as np

from ..backends.base import Array
from ..checks import is_real
from ..errors import ConfigError
from .base import Layer, check_int, repr_call
from .parameter import Parameter


class Dropout(Layer):
    """Inverted dropout: in training, y = x * keep / (1 - p) with keep ~ Bernoulli(1 - p)
    per element, drawn from the model's backend generator; the identity in eval mode
    (the 1 / (1 - p) scaling at training time keeps the expected activation equal)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not is_real(p) or not 0.0 <= p < 1.0:
            raise ConfigError(f"Dropout: p must be a number in [0, 1) (got {p!r})")
        self.p = float(p)
        self.rng = None
        self._mask = None

    def __repr__(self) -> str:
        return f"Dropout({self.p!r})"

    def _create(self, init_rng, rng) -> None:
        self.rng = rng

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        keep = self.rng.random(x.shape, dtype=x.dtype) >= self.p
        mask = keep.astype(x.dtype)
        mask *= 1.0 / (1.0 - self.p)
        self._mask = mask
        return x * mask

    def backward(self, dy):
        return dy if self._mask is None else dy * self._mask


class BatchNorm(Layer):
    """Batch normalisation (Ioffe & Szegedy 2015) of (C, H, W, N) maps, statistics over
    (H, W, N) per channel, or of (F, N) vectors, statistics over N per feature.

    Training: xhat = (x - mean) / sqrt(var + eps) with the batch's mean and biased
    variance over the M = H*W*N (or N) values of a channel; y = gamma * xhat + beta.
    The running estimates follow r = (1 - momentum) * r + momentum * stat, with the
    unbiased variance var * M / (M - 1) for running_var, as PyTorch. Eval mode normalises
    with the running estimates instead.
    Parameters: ``weight`` = gamma (C,), ``bias`` = beta (C,) (PyTorch's names);
    buffers: ``running_mean``, ``running_var`` (C,).
    """

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.num_features = check_int("BatchNorm", "num_features", num_features, 1)
        if not (is_real(momentum) and 0.0 <= momentum <= 1.0):
            raise ConfigError(f"BatchNorm: momentum must be in [0, 1] (got {momentum!r})")
        if not (is_real(eps) and eps > 0):
            raise ConfigError(f"BatchNorm: eps must be > 0 (got {eps!r})")
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.weight: Parameter | None = None
        self.bias: Parameter | None = None
        self.running_mean = None
        self.running_var = None
        self._ctx = None

    def __repr__(self) -> str:
        options = {k: v for k, v, default in (("momentum", self.momentum, 0.1),
                                              ("eps", self.eps, 1e-5)) if v != default}
        return repr_call("BatchNorm", (self.num_features,), options)

    def _create(self, init_rng, rng) -> None:
        f = self.num_features
        self.weight = Parameter(self._device(np.ones(f)))
        self.bias = Parameter(self._device(np.zeros(f)))
        self.running_mean = self._device(np.zeros(f))
        self.running_var = self._device(np.ones(f))

    def named_parameters(self) -> dict[str, Parameter]:
        return {} if self.weight is None else {"weight": self.weight, "bias": self.bias}

    def buffers(self) -> dict[str, Array]:
        if self.running_mean is None:
            return {}
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def num_parameters(self) -> int:
        return 2 * self.num_features

    def output_shape(self, in_shape):
        if len(in_shape) not in (1, 3) or in_shape[0] != self.num_features:
            raise ConfigError(f"{self!r} expects (C, H, W) or (F,) inputs with "
                              f"{self.num_features} channels, got shape {tuple(in_shape)}")
        return tuple(in_shape)

    def forward(self, x):
        xp = self.backend.xp
        x2 = x.reshape(x.shape[0], -1)  # (C, M): one row per channel, a view
        if self.training:
            m = x2.shape[1]
            if m < 2:
                raise ConfigError("BatchNorm needs at least 2 values per channel in "
                                  "training mode; use a batch size of at least 2")
            mean = x2.mean(axis=1)
            centered = x2 - mean[:, None]
            var = (centered * centered).mean(axis=1)
            mom = self.momentum
            self.running_mean *= 1.0 - mom
            self.running_mean += mom * mean
            self.running_var *= 1.0 - mom
            self.running_var += (mom * m / (m - 1)) * var
        else:
            centered = x2 - self.running_mean[:, None]
            var = self.running_var
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        xhat = centered
        xhat *= inv_std[:, None]
        y = xhat * self.weight.data[:, None]
        y += self.bias.data[:, None]
        self._ctx = (xhat, inv_std, x.shape, self.training)
        return y.reshape(x.shape)

    def backward(self, dy):
        xhat, inv_std, shape, batch_stats = self._ctx
        dy2 = dy.reshape(shape[0], -1)
        dbeta = dy2.sum(axis=1)
        dgamma = (dy2 * xhat).sum(axis=1)
        self.weight.grad = dgamma
        self.bias.grad = dbeta
        if not self.need_dx:
            return None
        scale = self.weight.data * inv_std
        if batch_stats:
            # the mean and variance depend on every x of the channel too:
            # dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat))
            m = dy2.shape[1]
            dx = dy2 - (dbeta / m)[:, None]
            dx -= xhat * (dgamma / m)[:, None]
            dx *= scale[:, None]
        else:
            dx = dy2 * scale[:, None]
        return dx.reshape(shape)
