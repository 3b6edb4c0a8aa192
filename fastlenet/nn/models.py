"""The model zoo and :class:`Model`, a Sequential bound to a backend with the conveniences
the trainer, checkpoints and CLI use.

Every model takes (1, 32, 32) images (MNIST's 28x28 digits padded by 2, as in LeCun 1998)
in the backend layout (1, 32, 32, N) and returns logits (10, N).

| name | layers | parameters | forward FLOP/image |
|---|---|---|---|
| ``lenet5`` | conv5-6, pool, conv5-16, pool, fc120, fc84, fc10; ReLU, max-pool | 61,706 | 0.83 M |
| ``lenet5-classic`` | LeCun 1998 (simplified): tanh, average pooling, C5 conv | 61,706 | 0.83 M |
| ``compact`` | 3 conv + BatchNorm, 2 max-pools, dropout, fc96, fc10 | 178,330 | 3.7 M |
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from ..backends import Backend, get_backend
from ..backends.base import Array
from ..checks import is_integer
from ..errors import CheckpointError, ConfigError, DataError
from .activation import ReLU, Tanh
from .base import Layer
from .conv import Conv2d
from .dense import Flatten, Linear
from .parameter import ParameterBuffer
from .pool import AvgPool2d, MaxPool2d
from .regularization import BatchNorm, Dropout
from .sequential import Sequential

DTYPES: tuple[str, ...] = ("float32", "float64")


class Model(Sequential):
    """A Sequential bound to a backend, dtype and seed.

    Attributes: ``name``, ``backend``, ``dtype`` (numpy dtype), ``input_shape`` (per
    sample, (C, H, W)), ``num_classes``, ``rng`` (the backend generator Dropout draws
    from; save and restore it with ``backend.rng_state`` / ``set_rng_state``), ``layers``,
    ``parameter_buffer`` (every parameter's values in one contiguous array, each
    Parameter a view: :class:`~fastlenet.nn.parameter.ParameterBuffer`).

    Initial weights come from a host generator seeded with ``seed`` and the dropout
    generator from an independent stream of the same seed, so the same seed gives the
    same weights on every backend. The first parameterised layer computes no input
    gradient (nothing upstream needs it), so :meth:`backward` returns None.
    """

    def __init__(self, layers: list[Layer], *, name: str, backend: str | Backend = "numpy",
                 dtype="float32", seed: int = 0, input_shape: tuple[int, ...] = (1, 32, 32)):
        super().__init__(*layers)
        self.name = name
        self.input_shape = tuple(input_shape)
        out_shape = self.output_shape(self.input_shape)
        if len(out_shape) != 1:
            raise ConfigError(f"model '{name}' must end in class scores (K,), its last "
                              f"layer gives {out_shape}; end it with Flatten and Linear")
        self.num_classes = out_shape[0]
        dtype = _check_dtype(dtype)
        if not is_integer(seed) or seed < 0:
            raise ConfigError(f"seed must be an integer >= 0 (got {seed!r})")
        backend = get_backend(backend)
        init_seq, dropout_seq = np.random.SeedSequence(int(seed)).spawn(2)
        self.rng = backend.default_rng(int(dropout_seq.generate_state(1)[0]))
        self.need_dx = False
        self.bind(backend, dtype, np.random.default_rng(init_seq), self.rng)
        for key, param in self.named_parameters().items():
            param.name = key
        # one contiguous array of all the weights, so an optimizer updates them in one pass
        self.parameter_buffer = ParameterBuffer(self.parameters(), backend, dtype)

    def __repr__(self) -> str:
        return (f"Model('{self.name}', {self.num_parameters():,} parameters, "
                f"backend={self.backend.name}, dtype={self.dtype.name})")

    # ---------------------------------------------------------------- training
    def forward(self, x: Array) -> Array:
        """x: (C, H, W, N) device array with (C, H, W) = input_shape -> logits (K, N)."""
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[:-1]) != self.input_shape:
            raise DataError(f"model '{self.name}' takes input of shape "
                            f"{(*self.input_shape, 'N')} (batch last), got {tuple(x.shape)}; "
                            "convert NCHW batches with backend.to_batch_last")
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        return super().forward(x)

    def backward(self, dlogits: Array) -> None:
        """dlogits (K, N) -> fills every Parameter.grad."""
        super().backward(dlogits)

    # ------------------------------------------------------------- inference
    def check_images(self, x_nchw) -> None:
        """Raise DataError unless ``x_nchw`` is a float batch (N, *input_shape)."""
        shape = tuple(x_nchw.shape)
        if len(shape) != len(self.input_shape) + 1 or shape[1:] != self.input_shape:
            raise DataError(f"model '{self.name}' takes images of shape {('N', *self.input_shape)} "
                            f"(MNIST's 28x28 padded by 2), got {shape}; the data must be 28x28 "
                            "images like MNIST's")
        if np.dtype(x_nchw.dtype).kind != "f":
            raise DataError(f"images must be floats preprocessed like the training data, "
                            f"got {x_nchw.dtype}; normalise them first (fastlenet.data.preprocess)")

    def batched_logits(self, x_nchw, batch_size: int = 1000):
        """Yield ``(start, logits (K, n))`` for host images (N, C, H, W) preprocessed like
        the training data, ``batch_size`` at a time, in eval mode (restored afterwards)."""
        self.check_images(x_nchw)
        if not is_integer(batch_size) or batch_size < 1:
            raise ConfigError(f"batch size must be an integer >= 1 (got {batch_size!r})")
        backend = self.backend
        was_training = self.training
        self.eval()
        try:
            for start in range(0, len(x_nchw), batch_size):
                batch = backend.asarray(x_nchw[start:start + batch_size], dtype=self.dtype)
                yield start, self.forward(backend.to_batch_last(batch))
        finally:
            self.train(was_training)

    def predict_proba(self, x_nchw: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Class probabilities (N, K) on the host for host images (N, C, H, W), float,
        preprocessed like the training data; runs in eval mode, ``batch_size`` at a time.
        """
        x = np.asarray(x_nchw)
        out = np.empty((len(x), self.num_classes), dtype=self.dtype)
        for start, logits in self.batched_logits(x, batch_size):
            out[start:start + logits.shape[1]] = self.backend.to_numpy(self.backend.softmax(logits)).T
        return out

    # ------------------------------------------------------------- state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of every parameter and buffer, keyed like ``"0.weight"`` and
        ``"1.running_mean"``."""
        return {key: np.array(self.backend.to_numpy(array), copy=True)
                for key, array in self._state_arrays().items()}

    def _state_arrays(self) -> dict[str, Array]:
        """The device arrays a state dict holds: every parameter, then every buffer."""
        return {**{k: p.data for k, p in self.named_parameters().items()}, **self.buffers()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Copy ``state`` into the parameters and buffers, in place (optimizers keep their
        references). Strict: every key present, none extra, shapes equal; otherwise
        CheckpointError naming the key, and nothing is changed."""
        targets = self._state_arrays()
        problem = "checkpoint is for another model"
        missing = [k for k in targets if k not in state]
        if missing:
            raise CheckpointError(f"{problem}: it has no {missing[0]}, which model "
                                  f"'{self.name}' needs")
        unexpected = [k for k in state if k not in targets]
        if unexpected:
            raise CheckpointError(f"{problem}: it has {unexpected[0]}, which model "
                                  f"'{self.name}' does not have")
        arrays = {}
        for key, target in targets.items():
            array = np.asarray(state[key])
            if array.shape != tuple(target.shape):
                raise CheckpointError(
                    f"{problem}: {key} has shape {array.shape}, "
                    f"model '{self.name}' expects {tuple(target.shape)}")
            if array.dtype.kind not in "fiu":
                raise CheckpointError(f"checkpoint entry {key} holds {array.dtype} values, "
                                      "not numbers; the file is corrupt")
            arrays[key] = array
        for key, target in targets.items():
            target[...] = self.backend.asarray(arrays[key], dtype=self.dtype)

    # ------------------------------------------------------------- summary
    def summary(self) -> list[dict]:
        """One row per layer: ``{"index", "kind", "output_shape", "params", "connections"}``
        (per sample; connections as defined in :meth:`Layer.describe`)."""
        rows, shape = [], self.input_shape
        for i, layer in enumerate(self.layers):
            kind, params, connections = layer.describe(shape)
            shape = layer.output_shape(shape)
            rows.append({"index": i, "kind": kind, "output_shape": shape,
                         "params": params, "connections": connections})
        return rows

    def summary_text(self) -> str:
        """The summary as an aligned table with totals. Its last column says where the
        executed plan differs from the layers as written (a conv + ReLU + max-pool, or a
        ReLU + max-pool, run as one step)."""
        rows = self.summary()
        table = [("layer", "kind", "output shape", "parameters", "connections", "runs as"),
                 ("", "input", str(self.input_shape), "", "", "")]
        for r in rows:
            step = self.fused.get(r["index"])
            if step is None:
                runs_as = ""
            elif self.fused.get(r["index"] - 1) is step:
                runs_as = "  (same step)"
            else:
                runs_as = f"{step!r}, fused"
            table.append((str(r["index"]), r["kind"], str(r["output_shape"]), f"{r['params']:,}",
                          f"{r['connections']:,}", runs_as))
        table.append(("", "total", "", f"{sum(r['params'] for r in rows):,}",
                      f"{sum(r['connections'] for r in rows):,}", f"{len(self.plan)} steps"))
        widths = [max(len(row[c]) for row in table) for c in range(6)]
        align = (str.rjust, str.ljust, str.ljust, str.rjust, str.rjust, str.ljust)
        lines = [f"model {self.name} ({self.backend.name}, {self.dtype.name})"]
        for row in table:
            cells = [fit(cell, width) for fit, cell, width in zip(align, row, widths)]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)


def _check_dtype(dtype) -> np.dtype:
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in DTYPES:
        raise ConfigError(f"unsupported dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    return resolved


# ------------------------------------------------------------------ the zoo
def lenet5() -> list[Layer]:
    """LeNet-5 with ReLU and max-pooling, He init: 61,706 parameters.

    C1 conv 5x5 1->6 (28x28), S2 max-pool 2, C3 conv 5x5 6->16 (10x10), S4 max-pool 2,
    F5 400->120, F6 120->84, output 84->10.
    """
    return [Conv2d(1, 6, 5), ReLU(), MaxPool2d(2),
            Conv2d(6, 16, 5), ReLU(), MaxPool2d(2),
            Flatten(),
            Linear(400, 120), ReLU(),
            Linear(120, 84), ReLU(),
            Linear(84, 10)]


def lenet5_classic() -> list[Layer]:
    """LeNet-5 after LeCun et al. 1998, simplified: 61,706 parameters.

    tanh activations, average-pooling subsampling, C5 as a 5x5 convolution to 120 maps of
    1x1, LeCun-normal init (std 1/sqrt(fan_in), the paper's choice for tanh units).
    Simplified from the paper: full C3 connectivity instead of its 10-of-16 table, no
    trainable coefficient in the subsampling, a linear output layer instead of RBF units
    (so F6 -> output is 850 parameters and C3 is 2,416: 61,706 in all, like ``lenet5``).
    """
    return [Conv2d(1, 6, 5, init="lecun"), Tanh(), AvgPool2d(2),
            Conv2d(6, 16, 5, init="lecun"), Tanh(), AvgPool2d(2),
            Conv2d(16, 120, 5, init="lecun"), Tanh(),
            Flatten(),
            Linear(120, 84, init="lecun"), Tanh(),
            Linear(84, 10, init="lecun")]


def compact() -> list[Layer]:
    """A deeper small CNN with BatchNorm, to beat LeNet-5's accuracy: 178,330 parameters.

    conv 5x5 1->16 (28x28), BN, ReLU, max-pool -> 14x14;
    conv 3x3 16->32 pad 1 (14x14), BN, ReLU, max-pool -> 7x7;
    conv 3x3 32->64 (5x5), BN, ReLU; dropout 0.25; fc 1600->96, ReLU; fc 96->10.
    About 3.7 MFLOP forward per image, 4.4x LeNet-5: the expensive early layers stay
    narrow and the width goes where the maps are small. BatchNorm sits only on feature
    maps, so any batch size of at least 1 trains (statistics pool over H, W and N); the
    convolutions feeding it have no bias, which BatchNorm's beta would cancel anyway.
    Its accuracy against ``lenet5``'s: docs/performance.md, Accuracy and time to accuracy.
    """
    return [Conv2d(1, 16, 5, bias=False), BatchNorm(16), ReLU(), MaxPool2d(2),
            Conv2d(16, 32, 3, padding=1, bias=False), BatchNorm(32), ReLU(), MaxPool2d(2),
            Conv2d(32, 64, 3, bias=False), BatchNorm(64), ReLU(),
            Flatten(), Dropout(0.25),
            Linear(1600, 96), ReLU(),
            Linear(96, 10)]


MODELS: dict[str, Callable[[], list[Layer]]] = {
    "lenet5": lenet5,
    "lenet5-classic": lenet5_classic,
    "compact": compact,
}


def build_model(name: str, backend: str | Backend = "numpy", dtype="float32",
                seed: int = 0) -> Model:
    """The zoo model ``name`` on ``backend`` in ``dtype``, initialised from ``seed``.

    ConfigError for an unknown name (listing the choices) or a dtype other than
    float32/float64; BackendUnavailableError for a backend that cannot run here.
    """
    if not isinstance(name, str) or name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return Model(MODELS[name](), name=name, backend=backend, dtype=dtype, seed=seed)


__all__ = ["DTYPES", "MODELS", "Model", "build_model"]
