"""Sequential: layers applied in order, with the fused steps it runs some of them as."""

from __future__ import annotations

from ..backends.base import Array
from ..errors import ConfigError
from .activation import ReLU
from .base import Layer
from .conv import Conv2d, Conv2dReLUMaxPool2d
from .dense import Linear
from .dense_chain import DenseChain
from .parameter import Parameter
from .pool import MaxPool2d, ReLUMaxPool2d
from .regularization import BatchNorm, BatchNormReLUMaxPool2d


class Sequential(Layer):
    """Layers applied in order; itself a Layer.

    ``layers`` is the architecture as written, and what indexing, iteration and parameter
    names follow (``"<index>.<attribute>"``: ``"0.weight"``, ``"8.running_mean"``).
    ``plan`` is what forward and backward run: the same layer objects, except that a
    Conv2d, ReLU and MaxPool2d in a row run as one :class:`Conv2dReLUMaxPool2d`, a
    BatchNorm, ReLU and MaxPool2d as one :class:`BatchNormReLUMaxPool2d`, any
    other ReLU directly followed by a MaxPool2d as one :class:`ReLUMaxPool2d`, and, once
    bound to a backend that asks for it (``fuses_dense_chain``), Linear, ReLU, Linear, ...
    ending in a Linear as one :class:`DenseChain`; ``Model``'s summary shows it. With
    ``need_dx = False`` the first parameterised layer computes no input gradient and
    backward stops there.
    """

    def __init__(self, *layers: Layer):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ConfigError(f"Sequential: item {i} is a {type(layer).__name__}, "
                                  "not a Layer")
            if isinstance(layer, (Conv2dReLUMaxPool2d, BatchNormReLUMaxPool2d)):
                first = type(layer).__name__[:-len("ReLUMaxPool2d")]
                raise ConfigError(f"Sequential: item {i} is a {type(layer).__name__}, which "
                                  f"Sequential makes itself; write {first}, ReLU() and "
                                  "MaxPool2d in a row instead")
            if isinstance(layer, DenseChain):
                raise ConfigError(f"Sequential: item {i} is a DenseChain, which Sequential "
                                  "makes itself; write Linear, ReLU() and Linear in a row instead")
        self.layers = list(layers)
        self._make_plan(dense_chains=False)
        self._first_trainable = next((i for i, layer in enumerate(self.layers)
                                      if layer.num_parameters()), None)
        self._need_dx = True

    def _make_plan(self, dense_chains: bool) -> None:
        """``plan`` and ``fused`` from ``layers``; Linear-ReLU chains become DenseChain steps
        only with ``dense_chains`` (the backend's choice, known once bound)."""
        self.plan: list[Layer] = []
        self.fused: dict[int, Layer] = {}  # layer index -> the fused step it runs in
        i = 0
        while i < len(self.layers):
            kinds = [type(layer) for layer in self.layers[i:i + 3]]
            chain = _chain_width(self.layers, i) if dense_chains else 0
            if chain:
                step, width = DenseChain(self.layers[i:i + chain:2]), chain
            elif kinds == [Conv2d, ReLU, MaxPool2d]:
                pool = self.layers[i + 2]
                step, width = Conv2dReLUMaxPool2d(self.layers[i], pool.size, pool.stride), 3
            elif kinds == [BatchNorm, ReLU, MaxPool2d]:
                pool = self.layers[i + 2]
                step, width = BatchNormReLUMaxPool2d(self.layers[i], pool.size, pool.stride), 3
            elif kinds[:2] == [ReLU, MaxPool2d]:
                pool = self.layers[i + 1]
                step, width = ReLUMaxPool2d(pool.size, pool.stride), 2
            else:
                step, width = self.layers[i], 1
            if width > 1:
                self.fused.update({i + j: step for j in range(width)})
            self.plan.append(step)
            i += width

    @property
    def need_dx(self) -> bool:
        return self._need_dx

    @need_dx.setter
    def need_dx(self, value: bool) -> None:
        """Passed on to the first parameterised layer, where backward stops."""
        self._need_dx = value
        if self._first_trainable is not None:
            self.layers[self._first_trainable].need_dx = value

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> Layer:
        return self.layers[index]

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self) -> str:
        return f"Sequential({', '.join(map(repr, self.layers))})"

    def _create(self, init_rng, rng) -> None:
        for layer in self.layers:  # in order: each draws its initial weights from init_rng
            layer.bind(self.backend, self.dtype, init_rng, rng)
        self._make_plan(dense_chains=self.backend.fuses_dense_chain())
        for step in set(self.fused.values()):
            step.bind(self.backend, self.dtype, init_rng, rng)
            step.train(self.training)

    def train(self, mode: bool = True) -> Sequential:
        self.training = mode
        for layer in (*self.layers, *self.fused.values()):
            layer.train(mode)
        return self

    def named_parameters(self) -> dict[str, Parameter]:
        return {f"{i}.{k}": p for i, layer in enumerate(self.layers)
                for k, p in layer.named_parameters().items()}

    def buffers(self) -> dict[str, Array]:
        return {f"{i}.{k}": b for i, layer in enumerate(self.layers)
                for k, b in layer.buffers().items()}

    def num_parameters(self) -> int:
        return sum(layer.num_parameters() for layer in self.layers)

    def output_shapes(self, in_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """The per-sample output shape after each layer; ConfigError names the layer
        whose input does not fit."""
        shapes, shape = [], tuple(in_shape)
        for i, layer in enumerate(self.layers):
            try:
                shape = tuple(layer.output_shape(shape))
            except ConfigError as exc:
                raise ConfigError(f"layer {i}: {exc}") from None
            shapes.append(shape)
        return shapes

    def output_shape(self, in_shape):
        shapes = self.output_shapes(in_shape)
        return shapes[-1] if shapes else tuple(in_shape)

    def describe(self, in_shape):
        connections, shape = 0, tuple(in_shape)
        for layer in self.layers:
            connections += layer.describe(shape)[2]
            shape = layer.output_shape(shape)
        return f"Sequential({len(self.layers)} layers)", self.num_parameters(), connections

    def forward(self, x):
        for step in self.plan:
            x = step.forward(x)
        return x

    def backward(self, dy):
        if not self.need_dx and self._first_trainable is None:
            return None
        for step in reversed(self.plan):
            dy = step.backward(dy)
            if dy is None:  # the first parameterised layer needed no input gradient
                break
        return dy


def _chain_width(layers: list[Layer], i: int) -> int:
    """How many layers from ``i`` on read Linear, ReLU, Linear, ... ending in a Linear,
    with at least two Linear layers; 0 where they do not."""
    if type(layers[i]) is not Linear:
        return 0
    end = i + 1
    while end + 1 < len(layers) and type(layers[end]) is ReLU and type(layers[end + 1]) is Linear:
        end += 2
    return end - i if end - i >= 3 else 0
