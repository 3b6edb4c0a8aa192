"""Pooling layers: MaxPool2d, AvgPool2d, ReLU + max-pool as one step, and the base of the
steps that run a layer together with the ReLU and max-pool after it."""

from __future__ import annotations

import math

from .base import Layer, check_int, check_map, repr_call, window_out


class _Pool2d(Layer):
    """Shared shape logic of the pooling layers: ``size x size`` windows, ``stride``
    defaulting to ``size`` (non-overlapping); (C, H, W, N) -> (C, OH, OW, N),
    OH = (H - size) // stride + 1."""

    def __init__(self, size: int, stride: int | None = None):
        super().__init__()
        kind = type(self).__name__
        self.size = check_int(kind, "size", size, 1)
        self.stride = self.size if stride is None else check_int(kind, "stride", stride, 1)
        self._ctx = None

    def __repr__(self) -> str:
        options = {} if self.stride == self.size else {"stride": self.stride}
        return repr_call(type(self).__name__, (self.size,), options)

    def output_shape(self, in_shape):
        c, h, w = check_map(self, in_shape)
        return (c, window_out(self, h, self.size, self.stride, 0),
                window_out(self, w, self.size, self.stride, 0))

    def describe(self, in_shape):
        c, oh, ow = self.output_shape(in_shape)
        return repr(self), 0, oh * ow * c * self.size * self.size


class MaxPool2d(_Pool2d):
    """Max over each window; the gradient goes to the first maximum (PyTorch's rule).

    Directly after a ReLU inside a Sequential, the pair runs as one ReLUMaxPool2d (and
    with the Conv2d before that ReLU, as one Conv2dReLUMaxPool2d).
    """

    def forward(self, x):
        y, self._ctx = self.backend.maxpool2d_forward(x, self.size, self.stride)
        return y

    def backward(self, dy):
        return self.backend.maxpool2d_backward(dy, self._ctx)


class ReLUMaxPool2d(_Pool2d):
    """``MaxPool2d(size, stride)(ReLU()(x))`` as one backend call each way.

    max and ReLU commute (both monotone), so the backend pools first and applies the ReLU
    to a quarter of the values, and the ReLU's mask never has to be stored. Sequential
    runs every ReLU directly followed by a MaxPool2d as one of these.
    """

    def __repr__(self) -> str:
        return "ReLU+" + repr_call("MaxPool2d", (self.size,),
                                   {} if self.stride == self.size else {"stride": self.stride})

    def describe(self, in_shape):
        kind, params, connections = super().describe(in_shape)
        return kind, params, connections + math.prod(in_shape)  # + the ReLU's

    def forward(self, x):
        y, self._ctx = self.backend.relu_maxpool2d_forward(x, self.size, self.stride)
        return y

    def backward(self, dy):
        return self.backend.relu_maxpool2d_backward(dy, self._ctx)


class AvgPool2d(_Pool2d):
    """Mean over each window (LeNet-5's subsampling, without its trainable scale)."""

    def forward(self, x):
        y, self._ctx = self.backend.avgpool2d_forward(x, self.size, self.stride)
        return y

    def backward(self, dy):
        return self.backend.avgpool2d_backward(dy, self._ctx)


class PooledStep(Layer):
    """Base of the steps Sequential makes of a layer (``first``) and the ReLU and
    MaxPool2d written after it, run as one backend call each way: their name, shapes
    and summary counts. The step holds ``first`` itself, not a copy."""

    def __init__(self, first: Layer, size: int, pool_stride: int):
        super().__init__()
        self.first = first
        self.pool = ReLUMaxPool2d(size, pool_stride)  # its shape logic and name
        self._ctx = None

    def __repr__(self) -> str:
        return f"{self.first!r}+{self.pool!r}"

    def output_shape(self, in_shape):
        return self.pool.output_shape(self.first.output_shape(in_shape))

    def describe(self, in_shape):
        _, params, first_connections = self.first.describe(in_shape)
        pool_connections = self.pool.describe(self.first.output_shape(in_shape))[2]
        return repr(self), params, first_connections + pool_connections
