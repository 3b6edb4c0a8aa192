"""The kernels of a training step of LeNet-5, lenet5-classic and compact, as benchmark
cases for every contender.

A contender is a fastlenet backend (by its registry name) or ``"torch"`` (PyTorch CPU,
the same operation as its autograd runs it in training). Each case method takes host
NumPy inputs in fastlenet's layout (feature maps (C, H, W, N), vectors (F, N); weights in
PyTorch shapes), does any untimed preparation (copying to the device, the forward pass
whose ``ctx`` a backward needs), and returns ``(call, fetch)``:

* ``call()`` runs the operation once, synchronizes the device and returns the raw result;
  it is what the benchmark times;
* ``fetch(result)`` turns that result into host NumPy arrays in fastlenet's layout, to be
  compared with the NumPy backend's.

:func:`measure` runs one benchmark of a case: checked against the NumPy backend's, warmed
up, timed (test_ops.py says how).

The LeNet-5 shapes at batch N (what the model runs):

| case | input | weights | output |
|---|---|---|---|
| conv1 | (1, 32, 32, N) | (6, 1, 5, 5) | (6, 28, 28, N); no input gradient (first layer) |
| conv2 | (6, 14, 14, N) | (16, 6, 5, 5) | (16, 10, 10, N) |
| pool1, pool2 | (6, 28, 28, N), (16, 10, 10, N) | 2x2 windows, stride 2 | (6, 14, 14, N), (16, 5, 5, N) |
| conv block (conv1, conv2) | conv1's, conv2's | and the pool after it | (6, 14, 14, N), (16, 5, 5, N): conv + ReLU + max-pool, the step the model runs forward |
| fc1, fc2, fc3 | (400, N), (120, N), (84, N) | (120, 400), (84, 120), (10, 84) | (120, N), (84, N), (10, N) |
| loss | logits (10, N), labels (N,) | | loss and dlogits (10, N) |
| adam | every LeNet-5 parameter and its gradient (61,706 values) | | |

The other models' own shapes (their other kernels are LeNet-5's or as small):

| case | input | weights | output |
|---|---|---|---|
| compact-conv1 | (1, 32, 32, N) | (16, 1, 5, 5), no bias | (16, 28, 28, N); no input gradient |
| compact-conv2 | (16, 14, 14, N) | (32, 16, 3, 3), padding 1, no bias | (32, 14, 14, N) |
| compact-conv3 | (32, 7, 7, N) | (64, 32, 3, 3), no bias | (64, 5, 5, N) |
| compact-bn1, -bn2, -bn3 | (16, 28, 28, N), (32, 14, 14, N), (64, 5, 5, N) | gamma, beta | batch norm in training mode, as its (C, M) rows |
| compact-bn1, -bn2 (block) | (16, 28, 28, N), (32, 14, 14, N) | gamma, beta | (16, 14, 14, N), (32, 7, 7, N): batch norm + ReLU + 2x2 max-pool, the step the model runs |
| classic-conv3 | (16, 5, 5, N) | (120, 16, 5, 5) | (120, 1, 1, N): LeNet-5's C5 |
| classic-pool1, classic-pool2 | (6, 28, 28, N), (16, 10, 10, N) | 2x2 average, stride 2 | (6, 14, 14, N), (16, 5, 5, N) |
| classic-tanh1, -tanh2, -tanh3 | (6, 28, 28, N), (16, 10, 10, N), (120, N) | | the same shape (tanh3 also stands for the (84, N) one after fc1) |

lenet5-classic's conv1 and conv2 have LeNet-5's shapes: their rows are ``conv1`` and
``conv2`` (conv2d_forward and conv2d_backward); ``-k "compact or classic"`` selects the
other models' own rows.
"""

from __future__ import annotations

import time
import zlib

import numpy as np

from fastlenet.backends import get_backend
from fastlenet.nn import build_model
from fastlenet.nn.parameter import Parameter
from fastlenet.optim import Adam

from .torch_contenders import TORCH_CONTENDERS, TORCH_CUDA, import_torch, set_up_torch_cuda

CHECKED_AGAINST = "numpy"  # the backend every contender's results are checked against

# name -> (C, H, W, K, kernel, pad, bias, need_dx): the models' convolutions
CONVS = {"conv1": (1, 32, 32, 6, 5, 0, True, False), "conv2": (6, 14, 14, 16, 5, 0, True, True),
         "compact-conv1": (1, 32, 32, 16, 5, 0, False, False),
         "compact-conv2": (16, 14, 14, 32, 3, 1, False, True),
         "compact-conv3": (32, 7, 7, 64, 3, 0, False, True),
         "classic-conv3": (16, 5, 5, 120, 5, 0, True, True)}
# the conv blocks LeNet-5 runs as one conv + ReLU + max-pool step
CONV_BLOCKS = ("conv1", "conv2")
# name -> (C, H, W): the inputs of LeNet-5's two ReLU + max-pool steps (max-pool cases),
# and of lenet5-classic's average pools (their own cases)
POOLS = {"pool1": (6, 28, 28), "pool2": (16, 10, 10)}
AVG_POOLS = {"classic-pool1": (6, 28, 28), "classic-pool2": (16, 10, 10)}
# name -> (C, H, W): the inputs of compact's batch norms
BATCHNORMS = {"compact-bn1": (16, 28, 28), "compact-bn2": (32, 14, 14), "compact-bn3": (64, 5, 5)}
# the batch norms followed by ReLU + max-pool (compact runs them as one step)
BATCHNORM_BLOCKS = ("compact-bn1", "compact-bn2")
BN = {"momentum": 0.1, "eps": 1e-5}
# name -> shape without the batch: the inputs of lenet5-classic's tanh activations
TANHS = {"classic-tanh1": (6, 28, 28), "classic-tanh2": (16, 10, 10), "classic-tanh3": (120,)}
POOL_SIZE = 2
# name -> (IN, OUT): the fully connected layers
LINEARS = {"fc1": (400, 120), "fc2": (120, 84), "fc3": (84, 10)}
CLASSES = 10
ADAM = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8}

WARMUP_CALLS = 3  # untimed calls between the checked first call and the timed ones

# float32 results are compared with the NumPy backend's to this fraction of the
# largest reference magnitude (reductions over 10^5-10^6 terms round differently
# in every library)
RTOL = 2e-4


# ------------------------------------------------------------------ inputs
def _rng(*key) -> np.random.Generator:
    """A generator seeded by ``key`` (the same inputs in every run and process)."""
    return np.random.default_rng([zlib.crc32(str(k).encode()) for k in key])


def conv_inputs(name: str, n: int):
    """x (C, H, W, N), w (K, C, k, k), b (K,) or None, pad, dy (K, OH, OW, N), need_dx;
    float32."""
    c, h, w, k, size, pad, bias, need_dx = CONVS[name]
    rng = _rng("conv", name, n)
    oh, ow = h + 2 * pad - size + 1, w + 2 * pad - size + 1
    x = rng.standard_normal((c, h, w, n), dtype=np.float32)
    wt = rng.standard_normal((k, c, size, size), dtype=np.float32) * np.float32(np.sqrt(2 / (c * size * size)))
    b = rng.standard_normal(k, dtype=np.float32) * np.float32(0.1) if bias else None
    dy = rng.standard_normal((k, oh, ow, n), dtype=np.float32)
    return x, wt, b, pad, dy, need_dx


def avgpool_inputs(name: str, n: int):
    """x (C, H, W, N) and dy (C, H/2, W/2, N); float32."""
    c, h, w = AVG_POOLS[name]
    rng = _rng("avgpool", name, n)
    return (rng.standard_normal((c, h, w, n), dtype=np.float32),
            rng.standard_normal((c, h // POOL_SIZE, w // POOL_SIZE, n), dtype=np.float32))


def batchnorm_inputs(name: str, n: int):
    """x (C, H, W, N), gamma (C,), beta (C,), dy (C, H, W, N); float32, x with a mean and
    spread of its own per channel, as a convolution's output has."""
    c, h, w = BATCHNORMS[name]
    rng = _rng("batchnorm", name, n)
    shift = rng.standard_normal((c, 1, 1, 1), dtype=np.float32)
    x = rng.standard_normal((c, h, w, n), dtype=np.float32) * np.float32(2) + shift
    gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
    beta = rng.standard_normal(c, dtype=np.float32) * np.float32(0.1)
    return x, gamma, beta, rng.standard_normal((c, h, w, n), dtype=np.float32)


def batchnorm_block_inputs(name: str, n: int):
    """x (C, H, W, N), gamma (C,), beta (C,) and dy (C, H/2, W/2, N); float32. Each
    channel of x is its own mean plus a shuffled grid of +-(j + 1/2) steps (each value
    a few hundred times; ties pool alike everywhere, to the first maximum), and beta is
    0: no normalised value lies within rounding of 0, where the ReLU would cut
    differently in each library."""
    c, h, w = BATCHNORMS[name]
    rng = _rng("batchnorm block", name, n)
    half = h * w * n // 2
    steps = np.arange(half) % 500 + 0.5
    grid = np.concatenate([steps, -steps]) * (3.5 / 500)  # spread about 2
    shift = rng.standard_normal((c, 1))
    x = np.ascontiguousarray(rng.permuted(np.broadcast_to(grid, (c, 2 * half)), axis=1) + shift,
                             dtype=np.float32)
    gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
    dy = rng.standard_normal((c, h // POOL_SIZE, w // POOL_SIZE, n), dtype=np.float32)
    return x.reshape(c, h, w, n), gamma, np.zeros(c, np.float32), dy


def tanh_inputs(name: str, n: int):
    """x and dy of shape (*TANHS[name], N); float32, x of spread 1.5 (tanh's bend)."""
    shape = (*TANHS[name], n)
    rng = _rng("tanh", name, n)
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(1.5),
            rng.standard_normal(shape, dtype=np.float32))


def pool_inputs(name: str, n: int):
    """Tie-free x (C, H, W, N), half of it negative (so the ReLU zeroes some windows),
    and dy (C, H/2, W/2, N); float32. Ties would make "the first maximum" the only
    thing deciding where a gradient goes, which the comparison should not depend on."""
    c, h, w = POOLS[name]
    rng = _rng("pool", name, n)
    size = c * h * w * n
    x = (rng.permutation(size).astype(np.float32) - np.float32(size // 2)).reshape(c, h, w, n)
    dy = rng.standard_normal((c, h // POOL_SIZE, w // POOL_SIZE, n), dtype=np.float32)
    return x, dy


def linear_inputs(name: str, n: int):
    """x (IN, N), w (OUT, IN), b (OUT,), dy (OUT, N); float32."""
    fan_in, fan_out = LINEARS[name]
    rng = _rng("linear", name, n)
    x = rng.standard_normal((fan_in, n), dtype=np.float32)
    w = rng.standard_normal((fan_out, fan_in), dtype=np.float32) * np.float32(np.sqrt(2 / fan_in))
    b = rng.standard_normal(fan_out, dtype=np.float32) * np.float32(0.1)
    dy = rng.standard_normal((fan_out, n), dtype=np.float32)
    return x, w, b, dy


def loss_inputs(n: int):
    """logits (10, N) float32 and labels (N,) int64."""
    rng = _rng("loss", n)
    return (rng.standard_normal((CLASSES, n), dtype=np.float32) * np.float32(3),
            rng.integers(0, CLASSES, n))


def adam_inputs():
    """{name: (parameter, gradient)} for every LeNet-5 parameter, float32."""
    rng = _rng("adam")
    params = build_model("lenet5", "numpy", seed=0).state_dict()
    return {name: (p, rng.standard_normal(p.shape, dtype=np.float32) * np.float32(0.01))
            for name, p in params.items()}


def assert_close(got: list, want: list, what: str, rtol: float = RTOL) -> None:
    """Each array equal to the reference's within ``rtol`` of the reference's largest value."""
    assert len(got) == len(want), f"{what}: {len(got)} results, the reference has {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, f"{what}: result {i} has shape {g.shape}, the reference {w.shape}"
        scale = float(np.abs(w).max()) if w.size else 0.0
        np.testing.assert_allclose(g, w, rtol=0, atol=rtol * max(scale, 1e-30),
                                   err_msg=f"{what}: result {i} differs from the NumPy backend's")


# ------------------------------------------------------------ one benchmark
def measure(benchmark, contender: str, op: str, layer: str | None, args: tuple,
            images: int | None, stateless: bool = True) -> None:
    """Check, warm up and time ``op`` of ``contender`` on ``args``; fill extra_info."""
    what = f"{contender} {op}" + (f" {layer}" if layer else "")
    ref_call, ref_fetch = getattr(cases(CHECKED_AGAINST), op)(*args)
    want = ref_fetch(ref_call())
    call, fetch = getattr(cases(contender), op)(*args)
    start = time.perf_counter()
    result = call()
    first_call = time.perf_counter() - start
    assert_close(fetch(result), want, what)
    for _ in range(WARMUP_CALLS):
        call()
    benchmark.group = op + (f" {layer}" if layer else "")
    info = benchmark.extra_info
    info.update(op=op, layer=layer, images=images, first_call_s=first_call)
    result = benchmark(call)
    if stateless:  # the same inputs, so still the reference's result
        assert_close(fetch(result), want, what + " (after timing)")
    if benchmark.stats:  # None with --benchmark-disable
        info["median_s"] = median = benchmark.stats.stats.median
        if images:
            info["images_per_second"] = images / median


# ------------------------------------------------------------ contenders
def cases(contender: str):
    """The case maker of ``contender``: a fastlenet backend name, ``"torch"`` or
    ``"torch-cuda"`` (the graph contender is timed per step and epoch, not per op)."""
    if contender in TORCH_CONTENDERS:
        device, graphs = TORCH_CONTENDERS[contender]
        if graphs:
            import pytest

            pytest.skip(f"{contender} replays whole training steps; its single ops are "
                        f"{TORCH_CUDA}'s")
        return TorchCases(device)
    return BackendCases(contender)


class BackendCases:
    """The cases run by a fastlenet backend's kernels (``fastlenet.backends.base``)."""

    def __init__(self, name: str):
        self.backend = get_backend(name)

    def _device(self, *arrays):
        # copies: the NumPy backend's asarray would alias the caller's arrays, and Adam
        # writes in place
        return [None if a is None else self.backend.asarray(np.array(a)) for a in arrays]

    def _timed(self, run):
        def call():
            out = run()
            self.backend.synchronize()
            return out
        return call

    def _host(self, arrays):
        return [self.backend.to_numpy(a) for a in arrays if a is not None]

    def conv2d_forward(self, x, w, b, pad):
        be = self.backend
        x, w, b = self._device(x, w, b)
        return (self._timed(lambda: be.conv2d_forward(x, w, b, 1, pad)),
                lambda out: self._host(out[:1]))

    def conv2d_backward(self, x, w, b, pad, dy, need_dx):
        be = self.backend
        x, w, b, dy = self._device(x, w, b, dy)
        _, ctx = be.conv2d_forward(x, w, b, 1, pad)
        return self._timed(lambda: be.conv2d_backward(dy, ctx, need_dx)), self._host

    def conv2d_relu_maxpool2d_forward(self, x, w, b, pad):
        be = self.backend
        x, w, b = self._device(x, w, b)
        return (self._timed(lambda: be.conv2d_relu_maxpool2d_forward(x, w, b, 1, pad, POOL_SIZE,
                                                                     POOL_SIZE)),
                lambda out: self._host(out[:1]))

    def _pool_forward(self, op: str, x):
        """The forward kernel ``<op>_forward`` over 2x2 windows; fetch gives y."""
        forward = getattr(self.backend, f"{op}_forward")
        (x,) = self._device(x)
        return self._timed(lambda: forward(x, POOL_SIZE, POOL_SIZE)), lambda out: self._host(out[:1])

    def _pool_backward(self, op: str, x, dy):
        """``<op>_backward`` from the ctx of an untimed forward; fetch gives dx."""
        forward, backward = (getattr(self.backend, f"{op}_{d}") for d in ("forward", "backward"))
        x, dy = self._device(x, dy)
        _, ctx = forward(x, POOL_SIZE, POOL_SIZE)
        return self._timed(lambda: backward(dy, ctx)), lambda out: self._host([out])

    def maxpool2d_forward(self, x):
        return self._pool_forward("maxpool2d", x)

    def maxpool2d_backward(self, x, dy):
        return self._pool_backward("maxpool2d", x, dy)

    def relu_maxpool2d_forward(self, x):
        return self._pool_forward("relu_maxpool2d", x)

    def relu_maxpool2d_backward(self, x, dy):
        return self._pool_backward("relu_maxpool2d", x, dy)

    def avgpool2d_forward(self, x):
        return self._pool_forward("avgpool2d", x)

    def avgpool2d_backward(self, x, dy):
        return self._pool_backward("avgpool2d", x, dy)

    def _batchnorm(self, x, gamma, beta):
        """The forward in training mode on x's (C, M) rows, with fresh running estimates
        (the timed calls move them on; the output does not read them)."""
        be, c = self.backend, x.shape[0]
        x, gamma, beta, mean, var = self._device(x.reshape(c, -1), gamma, beta, np.zeros(c, np.float32),
                                                 np.ones(c, np.float32))
        return lambda: be.batchnorm_forward(x, gamma, beta, mean, var, training=True, **BN)

    def batchnorm_forward(self, x, gamma, beta, dy):
        return self._timed(self._batchnorm(x, gamma, beta)), lambda out: self._host(out[:1])

    def batchnorm_backward(self, x, gamma, beta, dy):
        be = self.backend
        _, ctx = self._batchnorm(x, gamma, beta)()
        (dy,) = self._device(dy.reshape(dy.shape[0], -1))
        return self._timed(lambda: be.batchnorm_backward(dy, ctx)), self._host

    def batchnorm_relu_maxpool2d_forward(self, x, gamma, beta, dy):
        be, c = self.backend, x.shape[0]
        x, gamma, beta, mean, var = self._device(x, gamma, beta, np.zeros(c, np.float32),
                                                 np.ones(c, np.float32))

        def call():
            return be.batchnorm_relu_maxpool2d_forward(x, gamma, beta, mean, var, POOL_SIZE,
                                                       POOL_SIZE, training=True, **BN)
        return self._timed(call), lambda out: self._host(out[:1])

    def batchnorm_relu_maxpool2d_backward(self, x, gamma, beta, dy):
        be = self.backend
        forward, _ = self.batchnorm_relu_maxpool2d_forward(x, gamma, beta, dy)
        _, ctx = forward()
        (dy,) = self._device(dy)
        return self._timed(lambda: be.batchnorm_relu_maxpool2d_backward(dy, ctx)), self._host

    def tanh_forward(self, x):
        be = self.backend
        (x,) = self._device(x)
        return self._timed(lambda: be.tanh_forward(x)), lambda out: self._host(out[:1])

    def tanh_backward(self, x, dy):
        be = self.backend
        x, dy = self._device(x, dy)
        _, ctx = be.tanh_forward(x)
        return self._timed(lambda: be.tanh_backward(dy, ctx)), lambda dx: self._host([dx])

    def linear_forward(self, x, w, b):
        be = self.backend
        x, w, b = self._device(x, w, b)
        return self._timed(lambda: be.linear_forward(x, w, b)), lambda out: self._host(out[:1])

    def linear_backward(self, x, w, b, dy):
        be = self.backend
        x, w, b, dy = self._device(x, w, b, dy)
        _, ctx = be.linear_forward(x, w, b)
        return self._timed(lambda: be.linear_backward(dy, ctx, True)), self._host

    def softmax_cross_entropy(self, logits, labels):
        be = self.backend
        logits, labels = self._device(logits, labels)
        return self._timed(lambda: be.softmax_cross_entropy(logits, labels)), self._host

    def adam_update(self, params: dict):
        """One step of fastlenet's Adam over every parameter; fetch gives the parameters."""
        tensors = []
        for name, (p, g) in params.items():
            param = Parameter(*self._device(p), name=name)
            (param.grad,) = self._device(g)
            tensors.append(param)
        optimizer = Adam(tensors, self.backend, lr=ADAM["lr"], betas=ADAM["betas"], eps=ADAM["eps"])
        return self._timed(optimizer.step), lambda _: self._host([p.data for p in tensors])


class TorchCases:
    """The same operations in PyTorch, NCHW / (N, F) as PyTorch stores them: the aten
    kernels its autograd calls in a LeNet-5 training step (``convolution_backward``,
    ``max_pool2d_with_indices`` and its backward, ``threshold_backward`` for the ReLU,
    the matrix products of ``addmm``'s backward), and ``torch.optim.Adam``; on the CPU
    or on a CUDA device (float32 arithmetic there: see ``torch_contenders.set_up_torch_cuda``),
    where each call synchronizes the device, as fastlenet's do."""

    def __init__(self, device: str = "cpu"):
        self.torch = import_torch()
        self.device = self.torch.device(device)
        if self.device.type == "cuda":
            set_up_torch_cuda(self.torch)

    def _nchw(self, x):
        return self.torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 0))).to(self.device)

    def _tensor(self, a):
        return self.torch.from_numpy(np.array(a)).to(self.device)

    def _timed(self, run):
        if self.device.type != "cuda":
            return run

        def call():
            out = run()
            self.torch.cuda.synchronize(self.device)
            return out
        return call

    @staticmethod
    def _host(t):
        return t.detach().cpu().numpy()

    @classmethod
    def _chwn(cls, t):
        return np.moveaxis(cls._host(t), 0, -1)

    def conv2d_forward(self, x, w, b, pad):
        conv = self.torch.nn.functional.conv2d
        x, w, b = self._nchw(x), self._tensor(w), None if b is None else self._tensor(b)
        return self._timed(lambda: conv(x, w, b, padding=pad)), lambda y: [self._chwn(y)]

    def conv2d_backward(self, x, w, b, pad, dy, need_dx):
        backward = self.torch.ops.aten.convolution_backward
        x, w, dy = self._nchw(x), self._tensor(w), self._nchw(dy)
        bias_sizes = None if b is None else [len(b)]

        def call():
            return backward(dy, x, w, bias_sizes, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
                            [need_dx, True, b is not None])

        def fetch(out):
            dx, dw, db = out
            return (([self._chwn(dx)] if need_dx else []) + [self._host(dw)]
                    + ([self._host(db)] if b is not None else []))
        return self._timed(call), fetch

    def conv2d_relu_maxpool2d_forward(self, x, w, b, pad):
        torch, conv = self.torch, self.torch.nn.functional.conv2d
        x, w, b = self._nchw(x), self._tensor(w), self._tensor(b)
        return (self._timed(lambda: self._pool(torch.relu(conv(x, w, b, padding=pad)))),
                lambda out: [self._chwn(out[0])])

    def _pool(self, x):
        return self.torch.ops.aten.max_pool2d_with_indices(x, [POOL_SIZE] * 2, [POOL_SIZE] * 2)

    def _pool_backward(self, dy, x, indices):
        return self.torch.ops.aten.max_pool2d_with_indices_backward(
            dy, x, [POOL_SIZE] * 2, [POOL_SIZE] * 2, [0, 0], [1, 1], False, indices)

    def maxpool2d_forward(self, x):
        x = self._nchw(x)
        return self._timed(lambda: self._pool(x)), lambda out: [self._chwn(out[0])]

    def maxpool2d_backward(self, x, dy):
        x, dy = self._nchw(x), self._nchw(dy)
        _, indices = self._pool(x)
        return self._timed(lambda: self._pool_backward(dy, x, indices)), lambda dx: [self._chwn(dx)]

    def relu_maxpool2d_forward(self, x):
        torch, x = self.torch, self._nchw(x)
        return self._timed(lambda: self._pool(torch.relu(x))), lambda out: [self._chwn(out[0])]

    def relu_maxpool2d_backward(self, x, dy):
        torch, dy = self.torch, self._nchw(dy)
        relu = torch.relu(self._nchw(x))
        _, indices = self._pool(relu)

        def call():
            return torch.ops.aten.threshold_backward(self._pool_backward(dy, relu, indices), relu, 0)
        return self._timed(call), lambda dx: [self._chwn(dx)]

    def avgpool2d_forward(self, x):
        pool, x = self.torch.nn.functional.avg_pool2d, self._nchw(x)
        return self._timed(lambda: pool(x, POOL_SIZE, POOL_SIZE)), lambda y: [self._chwn(y)]

    def avgpool2d_backward(self, x, dy):
        backward = self.torch.ops.aten.avg_pool2d_backward
        x, dy = self._nchw(x), self._nchw(dy)

        def call():
            return backward(dy, x, [POOL_SIZE] * 2, [POOL_SIZE] * 2, [0, 0], False, True, None)
        return self._timed(call), lambda dx: [self._chwn(dx)]

    def _batchnorm(self, x, gamma, beta):
        """aten's native_batch_norm in training mode (what BatchNorm2d calls), NCHW."""
        torch, c = self.torch, x.shape[0]
        x, gamma, beta = self._nchw(x), self._tensor(gamma), self._tensor(beta)
        mean, var = self._tensor(np.zeros(c, np.float32)), self._tensor(np.ones(c, np.float32))
        return x, gamma, (mean, var), lambda: torch.ops.aten.native_batch_norm(
            x, gamma, beta, mean, var, True, BN["momentum"], BN["eps"])

    def batchnorm_forward(self, x, gamma, beta, dy):
        *_, forward = self._batchnorm(x, gamma, beta)
        c = x.shape[0]
        return self._timed(forward), lambda out: [self._chwn(out[0]).reshape(c, -1)]

    def batchnorm_backward(self, x, gamma, beta, dy):
        c = x.shape[0]
        x, gamma, (mean, var), forward = self._batchnorm(x, gamma, beta)
        _, save_mean, save_invstd = forward()
        dy = self._nchw(dy)

        def call():
            return self.torch.ops.aten.native_batch_norm_backward(
                dy, x, gamma, mean, var, save_mean, save_invstd, True, BN["eps"], [True] * 3)
        return self._timed(call), lambda out: [self._chwn(out[0]).reshape(c, -1),
                                               self._host(out[1]), self._host(out[2])]

    def batchnorm_relu_maxpool2d_forward(self, x, gamma, beta, dy):
        """native_batch_norm, relu and max_pool2d_with_indices, as BatchNorm2d, ReLU and
        MaxPool2d run in training."""
        *_, forward = self._batchnorm(x, gamma, beta)
        torch = self.torch
        return (self._timed(lambda: self._pool(torch.relu(forward()[0]))),
                lambda out: [self._chwn(out[0])])

    def batchnorm_relu_maxpool2d_backward(self, x, gamma, beta, dy):
        torch = self.torch
        x, gamma, (mean, var), forward = self._batchnorm(x, gamma, beta)
        y, save_mean, save_invstd = forward()
        relu = torch.relu(y)
        _, indices = self._pool(relu)
        dy = self._nchw(dy)

        def call():
            g = torch.ops.aten.threshold_backward(self._pool_backward(dy, relu, indices), relu, 0)
            return torch.ops.aten.native_batch_norm_backward(
                g, x, gamma, mean, var, save_mean, save_invstd, True, BN["eps"], [True] * 3)
        return self._timed(call), lambda out: [self._chwn(out[0]), self._host(out[1]),
                                               self._host(out[2])]

    def tanh_forward(self, x):
        torch, x = self.torch, self._nchw(x)
        return self._timed(lambda: torch.tanh(x)), lambda y: [self._chwn(y)]

    def tanh_backward(self, x, dy):
        torch = self.torch
        y, dy = torch.tanh(self._nchw(x)), self._nchw(dy)
        return (self._timed(lambda: torch.ops.aten.tanh_backward(dy, y)),
                lambda dx: [self._chwn(dx)])

    def linear_forward(self, x, w, b):
        linear = self.torch.nn.functional.linear
        x, w, b = self._tensor(x.T), self._tensor(w), self._tensor(b)
        return self._timed(lambda: linear(x, w, b)), lambda y: [self._host(y).T]

    def linear_backward(self, x, w, b, dy):
        torch = self.torch
        x, w, dy = self._tensor(x.T), self._tensor(w), self._tensor(dy.T)

        def call():
            return torch.mm(dy, w), torch.mm(dy.t(), x), dy.sum(0)
        return self._timed(call), lambda out: [self._host(out[0]).T, self._host(out[1]),
                                               self._host(out[2])]

    def softmax_cross_entropy(self, logits, labels):
        """Forward and backward of F.cross_entropy, as fastlenet's op computes both."""
        torch = self.torch
        logits, labels = self._tensor(logits.T).requires_grad_(), self._tensor(labels)

        def call():
            loss = torch.nn.functional.cross_entropy(logits, labels)
            (dlogits,) = torch.autograd.grad(loss, logits)
            return loss.detach(), dlogits
        return self._timed(call), lambda out: [self._host(out[0]), self._host(out[1]).T]

    def adam_update(self, params: dict):
        tensors = []
        for p, g in params.values():
            t = self._tensor(p).requires_grad_()
            t.grad = self._tensor(g)
            tensors.append(t)
        optimizer = self.torch.optim.Adam(tensors, **ADAM)
        return self._timed(optimizer.step), lambda _: [self._host(t) for t in tensors]
