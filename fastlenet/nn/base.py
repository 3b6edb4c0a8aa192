"""The layer contract: the Layer base classes and the argument checks layers share.

Every layer is written once against the backend interface (``fastlenet.backends.base``):
array maths goes through ``self.backend.xp`` and the heavy lifting through backend
kernels, so the same layer runs on every backend. Layouts are the backend's:
feature maps (C, H, W, N), feature vectors (F, N), batch innermost; weights in PyTorch
shapes, conv (K, C, KH, KW) and linear (OUT, IN).

Life of a layer:

* it is constructed from hyper-parameters only (``Conv2d(1, 6, 5)``), which is enough
  for :meth:`Layer.output_shape` and :meth:`Layer.describe` (the model summary);
* :meth:`Layer.bind` puts it on a backend: parameters are drawn on the host from a
  seeded ``numpy.random.Generator`` (identical on every backend) and copied to the device;
* ``forward(x)`` caches what ``backward`` needs; ``backward(dy)`` *assigns* every
  ``Parameter.grad`` (no zero_grad step) and returns dx, or None when the layer was told
  (``need_dx = False``) that nothing upstream wants an input gradient.

Host numpy is used here only for initialisation and dtypes, never for device arrays.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

from ..backends import Backend, get_backend
from ..backends.base import Array, window_out_size
from ..checks import is_integer
from ..errors import ArrayError, ConfigError
from .init import get_initializer
from .parameter import Parameter


def check_int(owner: str, what: str, value, minimum: int) -> int:
    """``value`` as an int, or a ConfigError naming ``owner`` and ``what``."""
    if not is_integer(value) or value < minimum:
        raise ConfigError(f"{owner}: {what} must be an integer >= {minimum} (got {value!r})")
    return int(value)


def check_map(layer: Layer, in_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``in_shape`` as (C, H, W), or a ConfigError: the layer takes feature maps."""
    if len(in_shape) != 3:
        raise ConfigError(f"{layer!r} needs a feature map (C, H, W) as input, got shape "
                          f"{tuple(in_shape)}; put it before Flatten")
    return tuple(in_shape)


def window_out(layer: Layer, size: int, window: int, stride: int, pad: int) -> int:
    """The backends' window_out_size, its error a ConfigError naming the layer."""
    try:
        return window_out_size(size, window, stride, pad)
    except ArrayError as exc:
        raise ConfigError(f"{layer!r}: {exc}; use a larger input or a smaller window") from None


def repr_call(name: str, args: tuple, options: dict) -> str:
    """``Name(arg, ..., key=value)`` listing only the options that differ from defaults."""
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in options.items()]
    return f"{name}({', '.join(parts)})"


class Layer(ABC):
    """Base class. Subclasses implement ``forward``/``backward``; layers with state
    override ``_create`` (make parameters and buffers), ``named_parameters``,
    ``buffers`` and ``num_parameters``; shape-changing layers override ``output_shape``.
    """

    # Whether backward must return the input gradient. A model sets it False on its first
    # parameterised layer (through Sequential.need_dx): nothing upstream wants dx there.
    need_dx: bool = True

    def __init__(self):
        self.backend: Backend | None = None
        self.dtype: np.dtype | None = None
        self.training = True

    def bind(self, backend: str | Backend, dtype, init_rng: np.random.Generator,
             rng) -> Layer:
        """Place the layer on ``backend`` in ``dtype`` and create its parameters.

        init_rng: host generator the initial weights are drawn from (layer by layer, in
        order); rng: the backend generator Dropout draws its masks from.
        Returns the layer itself.
        """
        self.backend = get_backend(backend)
        self.dtype = np.dtype(dtype)
        self._create(init_rng, rng)
        return self

    def __repr__(self) -> str:
        """``Name()``; layers with hyper-parameters list them."""
        return f"{type(self).__name__}()"

    def _create(self, init_rng: np.random.Generator, rng) -> None:
        """Make parameters and buffers on the device; stateless layers have none."""

    def _device(self, host: np.ndarray) -> Array:
        return self.backend.asarray(host, dtype=self.dtype)

    @abstractmethod
    def forward(self, x: Array) -> Array:
        """x: (C, H, W, N) or (F, N) -> y; caches what backward needs."""

    @abstractmethod
    def backward(self, dy: Array) -> Array | None:
        """dy shaped like the last forward's output -> dx shaped like its input."""

    def named_parameters(self) -> dict[str, Parameter]:
        """Parameters by attribute name, e.g. ``{"weight": ..., "bias": ...}``."""
        return {}

    def parameters(self) -> list[Parameter]:
        return list(self.named_parameters().values())

    def buffers(self) -> dict[str, Array]:
        """Non-trainable state saved with the model (BatchNorm's running statistics)."""
        return {}

    def num_parameters(self) -> int:
        """Number of trainable scalars, from the hyper-parameters alone."""
        return 0

    def train(self, mode: bool = True) -> Layer:
        self.training = mode
        return self

    def eval(self) -> Layer:
        return self.train(False)

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample output shape (no batch axis) for a per-sample input shape."""
        return tuple(in_shape)

    def describe(self, in_shape: tuple[int, ...]) -> tuple[str, int, int]:
        """``(kind, parameters, connections)`` for the model summary.

        Connections count, per sample, the multiply-adds (or comparisons) wiring inputs
        to outputs, LeCun 1998 style: conv OH*OW*K*(C*KH*KW + bias), linear
        OUT*(IN + bias), pooling OH*OW*C*size*size; element-wise layers (activations,
        BatchNorm, Dropout) one per element; Flatten none, it only renames axes.
        """
        return repr(self), self.num_parameters(), math.prod(self.output_shape(in_shape))


class Affine(Layer):
    """Shared parts of Conv2d and Linear: a ``weight`` Parameter, an optional ``bias``,
    and a forward/backward that hand both to a backend kernel pair."""

    def __init__(self, bias: bool, init: str):
        super().__init__()
        self.has_bias = bool(bias)
        self.init = init
        self._initializer = get_initializer(init)
        self.weight: Parameter | None = None
        self.bias: Parameter | None = None
        self._ctx = None

    def _repr_options(self, **options) -> dict:
        """Options that differ from their defaults, for ``__repr__``."""
        defaults = {"stride": 1, "padding": 0, "bias": True, "init": "he"}
        options.update(bias=self.has_bias, init=self.init)
        return {k: v for k, v in options.items() if v != defaults[k]}

    def _create_parameters(self, shape, fan_in: int, fan_out: int, init_rng) -> None:
        self.weight = Parameter(self._device(self._initializer(shape, fan_in, fan_out, init_rng)))
        self.bias = Parameter(self._device(np.zeros(shape[0]))) if self.has_bias else None

    def named_parameters(self) -> dict[str, Parameter]:
        return {k: p for k, p in (("weight", self.weight), ("bias", self.bias))
                if p is not None}

    def _bias_data(self):
        return self.bias.data if self.bias is not None else None

    def _store_grads(self, dw, db) -> None:
        self.weight.grad = dw
        if self.bias is not None:
            self.bias.grad = db
