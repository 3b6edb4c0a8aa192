"""The fully connected chain (Linear, ReLU, Linear, ..., Linear) as one step each way."""

from __future__ import annotations

import math

from .base import Layer
from .dense import Linear


class DenseChain(Layer):
    """Linear layers with a ReLU between each two (LeNet-5's 400-120-84-10) as one
    backend call each way (``dense_chain_forward`` / ``dense_chain_backward``), which a
    backend may run as one kernel with the activations on chip.

    It holds the Linear layers themselves, not copies: the parameters, their gradients
    and the first layer's ``need_dx`` are theirs. Only Sequential makes these, on a
    backend that asks for them (``Backend.fuses_dense_chain``); write the layers, not this.
    """

    def __init__(self, linears: list[Linear]):
        super().__init__()
        self.linears = list(linears)
        self._ctx = None

    def __repr__(self) -> str:
        return "+ReLU+".join(map(repr, self.linears))

    def output_shape(self, in_shape):
        for linear in self.linears:
            in_shape = linear.output_shape(in_shape)
        return in_shape

    def describe(self, in_shape):
        params = connections = 0
        for i, linear in enumerate(self.linears):
            if i:
                connections += math.prod(in_shape)  # the ReLU's, one per element
            _, p, c = linear.describe(in_shape)
            params, connections = params + p, connections + c
            in_shape = linear.output_shape(in_shape)
        return repr(self), params, connections

    def forward(self, x):
        y, self._ctx = self.backend.dense_chain_forward(
            x, [linear.weight.data for linear in self.linears],
            [linear._bias_data() for linear in self.linears])
        return y

    def backward(self, dy):
        dx, dws, dbs = self.backend.dense_chain_backward(dy, self._ctx,
                                                         need_dx=self.linears[0].need_dx)
        for linear, dw, db in zip(self.linears, dws, dbs):
            linear._store_grads(dw, db)
        return dx
