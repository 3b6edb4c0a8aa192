"""Layers with hand-written backward passes, the Sequential container and the loss.

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
from ..checks import is_integer, is_real
from ..errors import ArrayError, ConfigError
from .init import get_initializer


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
# ------------------------------------------------------------------- validation
def _check_int(owner: str, what: str, value, minimum: int) -> int:
    if not is_integer(value) or value < minimum:
        raise ConfigError(f"{owner}: {what} must be an integer >= {minimum} (got {value!r})")
    return int(value)


def _check_map(layer: Layer, in_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ConfigError(f"{layer!r} needs a feature map (C, H, W) as input, got shape "
                          f"{tuple(in_shape)}; put it before Flatten")
    return tuple(in_shape)


def _window_out(layer: Layer, size: int, window: int, stride: int, pad: int) -> int:
    """The backends' window_out_size, its error a ConfigError naming the layer."""
    try:
        return window_out_size(size, window, stride, pad)
    except ArrayError as exc:
        raise ConfigError(f"{layer!r}: {exc}; use a larger input or a smaller window") from None


def _signature(name: str, args: tuple, options: dict) -> str:
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


# ------------------------------------------------- layers with a weight and a bias
class _Affine(Layer):
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


# ------------------------------------------------------------------ convolution
class Conv2d(_Affine):
    """2-D convolution, a cross-correlation as in PyTorch's ``Conv2d``.

    x: (C, H, W, N) -> y: (K, OH, OW, N) with OH = (H + 2*padding - kernel) // stride + 1.
    Parameters: weight (K, C, kernel, kernel), bias (K,) unless ``bias=False``.
    ``init`` names the weight initialiser (``fastlenet.nn.init.INITIALIZERS``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: int = 0, bias: bool = True, init: str = "he"):
        super().__init__(bias, init)
        self.in_channels = _check_int("Conv2d", "in_channels", in_channels, 1)
        self.out_channels = _check_int("Conv2d", "out_channels", out_channels, 1)
        self.kernel_size = _check_int("Conv2d", "kernel_size", kernel_size, 1)
        self.stride = _check_int("Conv2d", "stride", stride, 1)
        self.padding = _check_int("Conv2d", "padding", padding, 0)

    def __repr__(self) -> str:
        return _signature("Conv2d", (self.in_channels, self.out_channels, self.kernel_size),
                          self._repr_options(stride=self.stride, padding=self.padding))

    def _create(self, init_rng, rng) -> None:
        k, c, s = self.out_channels, self.in_channels, self.kernel_size
        self._create_parameters((k, c, s, s), c * s * s, k * s * s, init_rng)

    def num_parameters(self) -> int:
        return self.out_channels * (self.in_channels * self.kernel_size ** 2 + self.has_bias)

    def output_shape(self, in_shape):
        c, h, w = _check_map(self, in_shape)
        if c != self.in_channels:
            raise ConfigError(f"{self!r} expects {self.in_channels} input channels, "
                              f"got {c}")
        return (self.out_channels,
                _window_out(self, h, self.kernel_size, self.stride, self.padding),
                _window_out(self, w, self.kernel_size, self.stride, self.padding))

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


# ---------------------------------------------------------------------- pooling
class _Pool2d(Layer):
    """Shared shape logic of the pooling layers: ``size x size`` windows, ``stride``
    defaulting to ``size`` (non-overlapping); (C, H, W, N) -> (C, OH, OW, N),
    OH = (H - size) // stride + 1."""

    def __init__(self, size: int, stride: int | None = None):
        super().__init__()
        kind = type(self).__name__
        self.size = _check_int(kind, "size", size, 1)
        self.stride = self.size if stride is None else _check_int(kind, "stride", stride, 1)
        self._ctx = None

    def __repr__(self) -> str:
        options = {} if self.stride == self.size else {"stride": self.stride}
        return _signature(type(self).__name__, (self.size,), options)

    def output_shape(self, in_shape):
        c, h, w = _check_map(self, in_shape)
        return (c, _window_out(self, h, self.size, self.stride, 0),
                _window_out(self, w, self.size, self.stride, 0))

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
        return "ReLU+" + _signature("MaxPool2d", (self.size,),
                                    {} if self.stride == self.size else {"stride": self.stride})

    def describe(self, in_shape):
        kind, params, connections = super().describe(in_shape)
        return kind, params, connections + math.prod(in_shape)  # + the ReLU's

    def forward(self, x):
        y, self._ctx = self.backend.relu_maxpool2d_forward(x, self.size, self.stride)
        return y

    def backward(self, dy):
        return self.backend.relu_maxpool2d_backward(dy, self._ctx)


class Conv2dReLUMaxPool2d(Layer):
    """``MaxPool2d(size, stride)(ReLU()(conv(x)))``: a Conv2d and the ReLU and max-pool
    that follow it (LeNet-5's conv blocks) as one backend call each way, which a backend
    may run without storing the convolution's output (the Numba backend does).

    It holds the Conv2d itself, not a copy: the parameters, their gradients and
    ``need_dx`` are the convolution's. Only Sequential makes these, from a Conv2d, ReLU and
    MaxPool2d written in a row (it binds the Conv2d as one of its layers); write those
    three, not this.
    """

    def __init__(self, conv: Conv2d, size: int, pool_stride: int):
        super().__init__()
        self.conv = conv
        self.pool = ReLUMaxPool2d(size, pool_stride)  # its shape logic and name
        self._ctx = None

    def __repr__(self) -> str:
        return f"{self.conv!r}+{self.pool!r}"

    def output_shape(self, in_shape):
        return self.pool.output_shape(self.conv.output_shape(in_shape))

    def describe(self, in_shape):
        _, params, conv_connections = self.conv.describe(in_shape)
        pool_connections = self.pool.describe(self.conv.output_shape(in_shape))[2]
        return repr(self), params, conv_connections + pool_connections

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


class AvgPool2d(_Pool2d):
    """Mean over each window (LeNet-5's subsampling, without its trainable scale)."""

    def forward(self, x):
        y, self._ctx = self.backend.avgpool2d_forward(x, self.size, self.stride)
        return y

    def backward(self, dy):
        return self.backend.avgpool2d_backward(dy, self._ctx)


# ---------------------------------------------------------------- fully connected
class Linear(_Affine):
    """Fully connected layer: y = W x + b; x: (IN, N) -> y: (OUT, N).

    Parameters: weight (OUT, IN), bias (OUT,) unless ``bias=False``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init: str = "he"):
        super().__init__(bias, init)
        self.in_features = _check_int("Linear", "in_features", in_features, 1)
        self.out_features = _check_int("Linear", "out_features", out_features, 1)

    def __repr__(self) -> str:
        return _signature("Linear", (self.in_features, self.out_features), self._repr_options())

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


# ------------------------------------------------------------------- activations
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
    """y = tanh(x); dx = dy * (1 - y^2)."""

    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x):
        self._y = self.backend.xp.tanh(x)
        return self._y

    def backward(self, dy):
        return dy * (1.0 - self._y * self._y)


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


# ------------------------------------------------------------------------ shapes
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


# ---------------------------------------------------------------- regularisation
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
        keep = self.rng.random(x.shape, dtype=x.dtype) >= self.p
        mask = keep.astype(x.dtype)
        mask *= 1.0 / (1.0 - self.p)
        self._mask = mask
        return x * mask

    def backward(self, dy):
        return dy if self._mask is None else dy * self._mask


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
        self.num_features = _check_int("BatchNorm", "num_features", num_features, 1)
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
        return _signature("BatchNorm", (self.num_features,), options)

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

    def forward(self, x):
        xp = self.backend.xp
        x2 = x.reshape(x.shape[0], -1)  # (C, M): one row per channel, a view
        if self.training:
            m = x2.shape[1]
            if m < 2:
                raise ConfigError("BatchNorm needs at least 2 values per channel in "
                                  "training mode; use a batch size of at least 2")
            mean = x2.mean(axis=1)
            centered = x2 - mean[:, None]
            var = (centered * centered).mean(axis=1)
            mom = self.momentum
            self.running_mean *= 1.0 - mom
            self.running_mean += mom * mean
            self.running_var *= 1.0 - mom
            self.running_var += (mom * m / (m - 1)) * var
        else:
            centered = x2 - self.running_mean[:, None]
            var = self.running_var
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        xhat = centered
        xhat *= inv_std[:, None]
        y = xhat * self.weight.data[:, None]
        y += self.bias.data[:, None]
        self._ctx = (xhat, inv_std, x.shape, self.training)
        return y.reshape(x.shape)

    def backward(self, dy):
        xhat, inv_std, shape, batch_stats = self._ctx
        dy2 = dy.reshape(shape[0], -1)
        dbeta = dy2.sum(axis=1)
        dgamma = (dy2 * xhat).sum(axis=1)
        self.weight.grad = dgamma
        self.bias.grad = dbeta
        if not self.need_dx:
            return None
        scale = self.weight.data * inv_std
        if batch_stats:
            # the mean and variance depend on every x of the channel too:
            # dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat))
            m = dy2.shape[1]
            dx = dy2 - (dbeta / m)[:, None]
            dx -= xhat * (dgamma / m)[:, None]
            dx *= scale[:, None]
        else:
            dx = dy2 * scale[:, None]
        return dx.reshape(shape)


# -------------------------------------------------------------------- container
class Sequential(Layer):
    """Layers applied in order; itself a Layer.

    ``layers`` is the architecture as written, and what indexing, iteration and parameter
    names follow (``"<index>.<attribute>"``: ``"0.weight"``, ``"8.running_mean"``).
    ``plan`` is what forward and backward run: the same layer objects, except that a
    Conv2d, ReLU and MaxPool2d in a row run as one :class:`Conv2dReLUMaxPool2d`, and any
    other ReLU directly followed by a MaxPool2d as one :class:`ReLUMaxPool2d`; ``Model``'s
    summary shows it. With ``need_dx = False`` the first parameterised layer computes no
    input gradient and backward stops there.
    """

    def __init__(self, *layers: Layer):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ConfigError(f"Sequential: item {i} is a {type(layer).__name__}, "
                                  "not a Layer")
            if isinstance(layer, Conv2dReLUMaxPool2d):
                raise ConfigError(f"Sequential: item {i} is a Conv2dReLUMaxPool2d, which "
                                  "Sequential makes itself; write Conv2d, ReLU() and "
                                  "MaxPool2d in a row instead")
        self.layers = list(layers)
        self.plan: list[Layer] = []
        self.fused: dict[int, Layer] = {}  # layer index -> the fused step it runs in
        i = 0
        while i < len(self.layers):
            kinds = [type(layer) for layer in self.layers[i:i + 3]]
            if kinds == [Conv2d, ReLU, MaxPool2d]:
                pool = self.layers[i + 2]
                step, width = Conv2dReLUMaxPool2d(self.layers[i], pool.size, pool.stride), 3
            elif kinds[:2] == [ReLU, MaxPool2d]:
                pool = self.layers[i + 1]
                step, width = ReLUMaxPool2d(pool.size, pool.stride), 2
            else:
                step, width = self.layers[i], 1
            if width > 1:
                self.fused.update({i + j: step for j in range(width)})
            self.plan.append(step)
            i += width
        self._first_trainable = next((i for i, layer in enumerate(self.layers)
                                      if layer.num_parameters()), None)
        self._need_dx = True

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
        for step in set(self.fused.values()):
            step.bind(self.backend, self.dtype, init_rng, rng)

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


# ------------------------------------------------------------------------- loss
class SoftmaxCrossEntropy:
    """Mean softmax cross-entropy of logits (K, N) against integer labels (N,).

    With label smoothing s the target is q = (1 - s) * onehot + s / K;
    loss = mean_n [logsumexp(z[:, n]) - sum_k q[k, n] z[k, n]], dlogits = (softmax - q) / N,
    computed by ``backend.softmax_cross_entropy`` (stable for logits of any size).
    ``backend`` is the model's (``SoftmaxCrossEntropy(s, backend=model.backend)``).
    """

    def __init__(self, label_smoothing: float = 0.0, *, backend: str | Backend):
        if not is_real(label_smoothing) or not 0.0 <= label_smoothing <= 1.0:
            raise ConfigError(f"label smoothing must be a number in [0, 1] "
                              f"(got {label_smoothing!r}); 0 disables it")
        self.label_smoothing = float(label_smoothing)
        self.backend = get_backend(backend)
        self._dlogits = None

    def forward(self, logits: Array, labels: Array) -> Array:
        """Loss as a 0-d device array (no host synchronisation); caches dlogits."""
        loss, self._dlogits = self.backend.softmax_cross_entropy(
            logits, labels, self.label_smoothing)
        return loss

    def backward(self) -> Array:
        """dloss/dlogits (K, N) of the last forward."""
        return self._dlogits
