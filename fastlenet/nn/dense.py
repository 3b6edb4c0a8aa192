"""Fully connected layers: Linear, and Flatten, which turns feature maps into its input."""

from __future__ import annotations

import math

from ..errors import ConfigError
from .base import Affine, Layer, check_int, repr_call


class Linear(Affine):
    """Fully connected layer: y = W x + b; x: (IN, N) -> y: (OUT, N).

    Parameters: weight (OUT, IN), bias (OUT,) unless ``bias=False``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init: str = "he"):
        super().__init__(bias, init)
        self.in_features = check_int("Linear", "in_features", in_features, 1)
        self.out_features = check_int("Linear", "out_features", out_features, 1)

    def __repr__(self) -> str:
        return repr_call("Linear", (self.in_features, self.out_features), self._repr_options())

    def _create(self, init_rng, rng) -> None:
        out, inp = self.out_features, self.in_features
        self._create_parameters((out, inp), inp, out, init_rng)

    def num_parameters(self) -> int:
        return self.out_features * (self.in_features + self.has_bias)

    def output_shape(self, in_shape):
        if tuple(in_shape) != (self.in_features,):
            raise ConfigError(f"{self!r} expects {self.in_features} input features, got "
                              f"shape {tuple(in_shape)}; put a Flatten before it or fix "
                              "in_features")
        return (self.out_features,)

    def describe(self, in_shape):
        self.output_shape(in_shape)
        return repr(self), self.num_parameters(), self.num_parameters()

    def forward(self, x):
        y, self._ctx = self.backend.linear_forward(x, self.weight.data, self._bias_data())
        return y

    def backward(self, dy):
        dx, dw, db = self.backend.linear_backward(dy, self._ctx, need_dx=self.need_dx)
        self._store_grads(dw, db)
        return dx


class Flatten(Layer):
    """(C, H, W, N) -> (C*H*W, N), a free reshape of the C-contiguous map.

    Feature f = c*H*W + h*W + w, the order of PyTorch's ``flatten`` of an NCHW tensor, so
    the following Linear's weights are interchangeable with PyTorch's.
    """

    def __init__(self):
        super().__init__()
        self._shape = None

    def output_shape(self, in_shape):
        return (math.prod(in_shape),)

    def describe(self, in_shape):
        return repr(self), 0, 0

    def forward(self, x):
        self._shape = x.shape
        return x.reshape(-1, x.shape[-1])

    def backward(self, dy):
        return dy.reshape(self._shape)
