"""Parameters: trainable device arrays, and the flat buffer that lays several out in one."""

from __future__ import annotations

import numpy as np

from ..backends import Backend
from ..backends.base import Array


class Parameter:
    """A trainable device array and its gradient.

    data: device array; grad: device array of the same shape, assigned by the owning
    layer's backward (None before the first backward); name: set by the model from the
    layer index and attribute, e.g. ``"0.weight"``, ``"3.bias"``; buffer: the
    :class:`ParameterBuffer` whose flat array ``data`` is a view of, or None.
    """

    __slots__ = ("data", "grad", "name", "buffer")

    def __init__(self, data: Array, name: str = ""):
        self.data = data
        self.grad: Array | None = None
        self.name = name
        self.buffer: ParameterBuffer | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.shape})"


class ParameterBuffer:
    """Parameters of one dtype moved into one contiguous device array, ``data``, each
    ``Parameter.data`` becoming a view of it, so that an optimizer updates them all in
    one pass over flat arrays laid out alike (one kernel launch on a GPU).

    Each parameter starts at a multiple of ALIGN elements, so every view starts on a
    128-byte boundary in float32; the gaps stay zero in every array laid out like
    ``data``, and the updates keep them at zero. Checkpoints read the parameters by name,
    so they do not see the buffer.
    """

    ALIGN = 32

    def __init__(self, params: list, backend: Backend, dtype):
        self.params = list(params)
        self.backend = backend
        self.dtype = np.dtype(dtype)
        self.offsets, end = [], 0
        for p in self.params:
            self.offsets.append(end)
            end += -(-p.data.size // self.ALIGN) * self.ALIGN
        self.size = end
        self._index = {id(p): i for i, p in enumerate(self.params)}
        self.data = self.zeros()
        for p, view in zip(self.params, self.views(self.data)):
            view[...] = p.data
            p.data, p.buffer = view, self

    def zeros(self) -> Array:
        """A new zero flat array laid out like ``data`` (an optimizer's moments, say)."""
        return self.backend.xp.zeros(self.size, dtype=self.dtype)

    def views(self, flat: Array) -> list[Array]:
        """Each parameter's part of a flat array laid out like ``data``, in its shape."""
        return [self.view(flat, p) for p in self.params]

    def view(self, flat: Array, param) -> Array:
        """``param``'s part of a flat array laid out like ``data``, in its shape."""
        start = self.offsets[self._index[id(param)]]
        return flat[start:start + param.data.size].reshape(param.data.shape)

    def extent(self, param) -> tuple[int, int]:
        """``(start, end)`` of ``param``'s part of a flat array, the zero gap after it
        included, so that neighbouring parameters' extents meet."""
        i = self._index[id(param)]
        return self.offsets[i], (self.offsets[i + 1] if i + 1 < len(self.params) else self.size)

    @staticmethod
    def of(params: list) -> ParameterBuffer | None:
        """The one buffer every parameter of ``params`` lies in, or None."""
        buffers = {id(getattr(p, "buffer", None)): getattr(p, "buffer", None) for p in params}
        if len(buffers) != 1:
            return None
        return next(iter(buffers.values()))
