"""Layers that regularise training: Dropout and BatchNorm, and the BatchNorm + ReLU +
max-pool block Sequential runs as one step."""

from __future__ import annotations

import numpy as np

from ..backends.base import Array
from ..checks import is_real
from ..errors import ConfigError
from .base import Layer, check_int, repr_call
from .parameter import Parameter
from .pool import PooledStep


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
        y, self._mask = self.backend.dropout_forward(x, self.p, self.rng)
        return y

    def backward(self, dy):
        return dy if self._mask is None else self.backend.dropout_backward(dy, self._mask)


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

    def check_batch(self, x) -> None:
        """ConfigError when training on fewer than 2 values per channel."""
        if self.training and x.size < 2 * x.shape[0]:
            raise ConfigError("BatchNorm needs at least 2 values per channel in "
                              "training mode; use a batch size of at least 2")

    def forward(self, x):
        self.check_batch(x)
        x2 = x.reshape(x.shape[0], -1)  # (C, M): one row per channel, a view
        y, self._ctx = self.backend.batchnorm_forward(
            x2, self.weight.data, self.bias.data, self.running_mean, self.running_var,
            training=self.training, momentum=self.momentum, eps=self.eps)
        return y.reshape(x.shape)

    def backward(self, dy):
        dx, self.weight.grad, self.bias.grad = self.backend.batchnorm_backward(
            dy.reshape(dy.shape[0], -1), self._ctx, need_dx=self.need_dx)
        return None if dx is None else dx.reshape(dy.shape)


class BatchNormReLUMaxPool2d(PooledStep):
    """``MaxPool2d(size, stride)(ReLU()(bn(x)))``: a BatchNorm of feature maps and the ReLU
    and max-pool that follow it (compact's first two blocks) as one backend call each
    way, which a backend may run without storing the normalised map (the Numba backend
    does).

    It holds the BatchNorm itself, not a copy: parameters, running estimates, gradients,
    ``need_dx`` and the training mode are the BatchNorm's. Only Sequential makes these,
    from a BatchNorm, ReLU and MaxPool2d written in a row; write those three, not this.
    """

    def __init__(self, bn: BatchNorm, size: int, pool_stride: int):
        super().__init__(bn, size, pool_stride)
        self.bn = bn

    def forward(self, x):
        bn = self.bn
        bn.check_batch(x)
        y, self._ctx = self.backend.batchnorm_relu_maxpool2d_forward(
            x, bn.weight.data, bn.bias.data, bn.running_mean, bn.running_var, self.pool.size,
            self.pool.stride, training=bn.training, momentum=bn.momentum, eps=bn.eps)
        return y

    def backward(self, dy):
        bn = self.bn
        dx, bn.weight.grad, bn.bias.grad = self.backend.batchnorm_relu_maxpool2d_backward(
            dy, self._ctx, need_dx=bn.need_dx)
        return dx
