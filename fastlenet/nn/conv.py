"""Convolution layers: Conv2d, and the Conv2d + ReLU + max-pool block Sequential runs as one
step."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Affine, check_int, check_map, repr_call, window_out
from .pool import PooledStep


class Conv2d(Affine):
    """2-D convolution, a cross-correlation as in PyTorch's ``Conv2d``.

    x: (C, H, W, N) -> y: (K, OH, OW, N) with OH = (H + 2*padding - kernel) // stride + 1.
    Parameters: weight (K, C, kernel, kernel), bias (K,) unless ``bias=False``.
    ``init`` names the weight initialiser (``fastlenet.nn.init.INITIALIZERS``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: int = 0, bias: bool = True, init: str = "he"):
        super().__init__(bias, init)
        self.in_channels = check_int("Conv2d", "in_channels", in_channels, 1)
        self.out_channels = check_int("Conv2d", "out_channels", out_channels, 1)
        self.kernel_size = check_int("Conv2d", "kernel_size", kernel_size, 1)
        self.stride = check_int("Conv2d", "stride", stride, 1)
        self.padding = check_int("Conv2d", "padding", padding, 0)

    def __repr__(self) -> str:
        return repr_call("Conv2d", (self.in_channels, self.out_channels, self.kernel_size),
                         self._repr_options(stride=self.stride, padding=self.padding))

    def _create(self, init_rng, rng) -> None:
        k, c, s = self.out_channels, self.in_channels, self.kernel_size
        self._create_parameters((k, c, s, s), c * s * s, k * s * s, init_rng)

    def num_parameters(self) -> int:
        return self.out_channels * (self.in_channels * self.kernel_size ** 2 + self.has_bias)

    def output_shape(self, in_shape):
        c, h, w = check_map(self, in_shape)
        if c != self.in_channels:
            raise ConfigError(f"{self!r} expects {self.in_channels} input channels, "
                              f"got {c}")
        return (self.out_channels,
                window_out(self, h, self.kernel_size, self.stride, self.padding),
                window_out(self, w, self.kernel_size, self.stride, self.padding))

    def describe(self, in_shape):
        _, oh, ow = self.output_shape(in_shape)
        fan_in = self.in_channels * self.kernel_size ** 2 + self.has_bias
        return repr(self), self.num_parameters(), oh * ow * self.out_channels * fan_in

    def forward(self, x):
        y, self._ctx = self.backend.conv2d_forward(x, self.weight.data, self._bias_data(),
                                                   self.stride, self.padding)
        return y

    def backward(self, dy):
        dx, dw, db = self.backend.conv2d_backward(dy, self._ctx, need_dx=self.need_dx)
        self._store_grads(dw, db)
        return dx


class Conv2dReLUMaxPool2d(PooledStep):
    """``MaxPool2d(size, stride)(ReLU()(conv(x)))``: a Conv2d and the ReLU and max-pool
    that follow it (LeNet-5's conv blocks) as one backend call each way, which a backend
    may run without storing the convolution's output (the Numba backend does).

    It holds the Conv2d itself, not a copy: the parameters, their gradients and
    ``need_dx`` are the convolution's. Only Sequential makes these, from a Conv2d, ReLU and
    MaxPool2d written in a row (it binds the Conv2d as one of its layers); write those
    three, not this.
    """

    def __init__(self, conv: Conv2d, size: int, pool_stride: int):
        super().__init__(conv, size, pool_stride)
        self.conv = conv

    def forward(self, x):
        conv = self.conv
        y, self._ctx = self.backend.conv2d_relu_maxpool2d_forward(
            x, conv.weight.data, conv._bias_data(), conv.stride, conv.padding,
            self.pool.size, self.pool.stride)
        return y

    def backward(self, dy):
        dx, dw, db = self.backend.conv2d_relu_maxpool2d_backward(dy, self._ctx,
                                                                 need_dx=self.conv.need_dx)
        self.conv._store_grads(dw, db)
        return dx
