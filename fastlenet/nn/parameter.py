"""Parameters: a trainable device array with its gradient, and the flat buffer that holds
a model's parameters in one array."""

from __future__ import annotations

import numpy as np

from ..backends import Backend
from ..backends.base import Array


class Parameter:
    """A trainable device array and its gradient.

    data: device array; grad: device array of the same shape, assigned by the owning
    layer's backward (None before the first backward); name: set by the model from the
    layer index and attribute, e.g. ``"0.weight"``, ``"3.bias"``.

    Inside a :class:`ParameterBuffer` (a model's parameters), ``data`` is a view of the
    buffer's one contiguous array, and assigning ``grad`` copies the values into the
    view of the buffer's gradient array, which ``grad`` then is: an optimizer updates
    every parameter in one pass over the two arrays.
    """

    __slots__ = ("data", "name", "buffer", "_grad", "_grad_view")

    def __init__(self, data: Array, name: str = ""):
        self.data = data
        self.name = name
        self.buffer: ParameterBuffer | None = None  # set by ParameterBuffer
        self._grad: Array | None = None
        self._grad_view: Array | None = None

    @property
    def grad(self) -> Array | None:
        return self._grad

    @grad.setter
    def grad(self, value: Array | None) -> None:
        if value is None or self._grad_view is None:
            self._grad = value
            return
        if value is not self._grad_view:
            self._grad_view[...] = value
        self._grad = self._grad_view

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.shape})"


class ParameterBuffer:
    """Parameters of one dtype moved into one contiguous device array (``data``), each
    ``Parameter.data`` becoming a view of it, and given one contiguous gradient array
    (``grad``) that their ``grad`` values are copied into.

    An optimizer then updates all of them in one pass over flat arrays (one kernel
    launch on a GPU, one fused loop on the CPU) instead of one pass per parameter. Each
    parameter starts at a multiple of ALIGN elements (the gaps stay zero in every
    array, which the updates keep at zero), so every view starts on a 128-byte
    boundary in float32. Checkpoints are unchanged: they read the parameters by name.
    """

    ALIGN = 32

    def __init__(self, params: list[Parameter], backend: Backend, dtype):
        self.params = list(params)
        self.backend = backend
        self.dtype = np.dtype(dtype)
        self.offsets, end = [], 0
        for p in self.params:
            self.offsets.append(end)
            end += -(-p.data.size // self.ALIGN) * self.ALIGN
        self.size = end
        self.data = self.zeros()
        self.grad = self.zeros()
        for p, view, grad in zip(self.params, self.views(self.data), self.views(self.grad)):
            view[...] = p.data
            p.data, p.buffer, p._grad_view = view, self, grad

    def zeros(self) -> Array:
        """A new zero flat array laid out like ``data`` (for an optimizer's moments)."""
        return self.backend.xp.zeros(self.size, dtype=self.dtype)

    def views(self, flat: Array) -> list[Array]:
        """Each parameter's part of a flat array laid out like ``data``, in its shape."""
        return [flat[o:o + p.data.size].reshape(p.data.shape)
                for o, p in zip(self.offsets, self.params)]

    @staticmethod
    def of(params: list) -> ParameterBuffer | None:
        """The buffer holding exactly ``params``, in this order, or None."""
        buffer = getattr(params[0], "buffer", None) if params else None
        if buffer is None or len(buffer.params) != len(params):
            return None
        return buffer if all(a is b for a, b in zip(buffer.params, params)) else None
