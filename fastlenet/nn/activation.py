"""Element-wise activations: ReLU, Tanh, Sigmoid."""

from __future__ import annotations

from .base import Layer


class ReLU(Layer):
    """y = max(x, 0); dx = dy * [x > 0] (the subgradient 0 at x = 0, as PyTorch)."""

    def __init__(self):
        super().__init__()
        self._mask = None

    def forward(self, x):
        self._mask = x > 0
        return self.backend.xp.maximum(x, 0)

    def backward(self, dy):
        return dy * self._mask


class Tanh(Layer):
    """y = tanh(x); dx = dy * (1 - y^2) (the backend's tanh kernels)."""

    def __init__(self):
        super().__init__()
        self._ctx = None

    def forward(self, x):
        y, self._ctx = self.backend.tanh_forward(x)
        return y

    def backward(self, dy):
        return self.backend.tanh_backward(dy, self._ctx)


class Sigmoid(Layer):
    """y = 1 / (1 + exp(-x)) = (1 + tanh(x / 2)) / 2; dx = dy * y * (1 - y).

    The tanh form never overflows, where exp(-x) would for x below about -88 (float32).
    """

    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x):
        y = self.backend.xp.tanh(x * 0.5)
        y += 1.0
        y *= 0.5
        self._y = y
        return y

    def backward(self, dy):
        return dy * self._y * (1.0 - self._y)
