"""LeNet-5 written by hand in NumPy on NCHW arrays, as in a course assignment, and the
same network with its convolution layer replaced by fastlenet's.

    python examples/numpy_lenet5.py                   # times a training step both ways
    python examples/numpy_lenet5.py --backend numpy --batch-size 128 --steps 10

The hand-written layers are the usual ones: a convolution that loops over output
positions and contracts each window with every filter at once (``np.tensordot``, the
batch vectorised), 2x2 max-pooling by reshaping, ReLU, fully connected layers and
softmax cross-entropy, each with its backward. Swapping in fastlenet's convolution
touches two functions (``fastlenet_conv``); nothing else changes. Each training step
(forward, backward, SGD update) is timed on the same MNIST batch, the two networks
taking turns so that a busy machine slows both alike, and the script prints the median
step times and their ratio.

Threads: both networks run with BLAS limited to ``--blas-threads`` (default 1) when
threadpoolctl is installed (without it the script runs with BLAS's own threads and says
so). Idle OpenBLAS threads and idle Numba workers both spin, and when the network's own
BLAS calls (the dense layers) alternate with Numba's parallel convolutions on a 2-core
machine they fight: with 2 BLAS threads the fastlenet step ran 10-15x slower than with 1
(measured on the 2-core development machine), and the hand-written one was slower too.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import numpy as np


# ------------------------------------------------------------------ hand-written layers
def conv_forward(x, w, b):
    """x (N, C, H, W), w (K, C, KH, KW), b (K,) -> out (N, K, OH, OW), no padding, stride 1."""
    n, _, h, wd = x.shape
    k, _, kh, kw = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    out = np.empty((n, k, oh, ow), dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            window = x[:, :, i:i + kh, j:j + kw]                 # (N, C, KH, KW)
            out[:, :, i, j] = np.tensordot(window, w, axes=([1, 2, 3], [1, 2, 3])) + b
    return out, (x, w)


def conv_backward(dout, cache):
    """dout (N, K, OH, OW) -> dx (N, C, H, W), dw (K, C, KH, KW), db (K,)."""
    x, w = cache
    _, _, kh, kw = w.shape
    _, _, oh, ow = dout.shape
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for i in range(oh):
        for j in range(ow):
            d = dout[:, :, i, j]                                  # (N, K)
            dw += np.tensordot(d, x[:, :, i:i + kh, j:j + kw], axes=([0], [0]))
            dx[:, :, i:i + kh, j:j + kw] += np.tensordot(d, w, axes=([1], [0]))
    return dx, dw, dout.sum(axis=(0, 2, 3))


def fastlenet_conv(backend: str):
    """The same two functions, computed by fastlenet on ``backend``."""
    from fastlenet import functional as F

    def forward(x, w, b):
        return F.conv2d(x, w, b, backend=backend)

    return forward, F.conv2d_backward


def maxpool_forward(x):
    """2x2 windows, stride 2: (N, C, H, W) -> (N, C, H/2, W/2)."""
    n, c, h, w = x.shape
    windows = x.reshape(n, c, h // 2, 2, w // 2, 2)
    out = windows.max(axis=(3, 5))
    return out, (windows == out[:, :, :, None, :, None], x.shape)


def maxpool_backward(dout, cache):
    mask, shape = cache
    # ties (rare in real data) would all get the gradient; fine for a student network
    return (mask * dout[:, :, :, None, :, None]).reshape(shape)


def relu_forward(x):
    return np.maximum(x, 0), x > 0


def relu_backward(dout, mask):
    return dout * mask


def affine_forward(x, w, b):
    """x (N, IN), w (IN, OUT) -> (N, OUT)."""
    return x @ w + b, (x, w)


def affine_backward(dout, cache):
    x, w = cache
    return dout @ w.T, x.T @ dout, dout.sum(axis=0)


def softmax_loss(scores, y):
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(y)
    dscores = np.exp(log_p)
    dscores[np.arange(n), y] -= 1
    return -log_p[np.arange(n), y].mean(), dscores / n


# ------------------------------------------------------------------ the network
class LeNet5:
    """conv5-6, relu, pool, conv5-16, relu, pool, fc120, relu, fc84, relu, fc10 on
    (N, 1, 32, 32) images; ``conv`` is the (forward, backward) pair of functions."""

    def __init__(self, seed=0, dtype=np.float32, conv=(conv_forward, conv_backward)):
        rng = np.random.default_rng(seed)

        def he(*shape, fan_in):
            return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)

        self.p = {"W1": he(6, 1, 5, 5, fan_in=25), "b1": np.zeros(6, dtype),
                  "W2": he(16, 6, 5, 5, fan_in=150), "b2": np.zeros(16, dtype),
                  "W3": he(400, 120, fan_in=400), "b3": np.zeros(120, dtype),
                  "W4": he(120, 84, fan_in=120), "b4": np.zeros(84, dtype),
                  "W5": he(84, 10, fan_in=84), "b5": np.zeros(10, dtype)}
        self.conv_forward, self.conv_backward = conv

    def loss_and_grads(self, x, y):
        p, caches = self.p, []
        h = x
        for k in ("1", "2"):
            h, c_conv = self.conv_forward(h, p["W" + k], p["b" + k])
            h, c_relu = relu_forward(h)
            h, c_pool = maxpool_forward(h)
            caches.append((c_conv, c_relu, c_pool))
        shape = h.shape
        h = h.reshape(len(x), -1)
        dense = []
        for k in ("3", "4"):
            h, c_aff = affine_forward(h, p["W" + k], p["b" + k])
            h, c_relu = relu_forward(h)
            dense.append((c_aff, c_relu))
        scores, c_out = affine_forward(h, p["W5"], p["b5"])
        loss, d = softmax_loss(scores, y)

        grads = {}
        d, grads["W5"], grads["b5"] = affine_backward(d, c_out)
        for k, (c_aff, c_relu) in zip(("4", "3"), reversed(dense)):
            d, grads["W" + k], grads["b" + k] = affine_backward(relu_backward(d, c_relu), c_aff)
        d = d.reshape(shape)
        for k, (c_conv, c_relu, c_pool) in zip(("2", "1"), reversed(caches)):
            d = relu_backward(maxpool_backward(d, c_pool), c_relu)
            d, grads["W" + k], grads["b" + k] = self.conv_backward(d, c_conv)
        return loss, grads

    def train_step(self, x, y, lr=0.05):
        loss, grads = self.loss_and_grads(x, y)
        for name, g in grads.items():
            self.p[name] -= lr * g
        return float(loss)


# ------------------------------------------------------------------ timing
def mnist_batch(batch_size: int, dtype):
    from fastlenet.data import load_dataset, preprocess

    mnist = load_dataset("mnist")
    x = preprocess(mnist.train_images[:batch_size], 0.1307, 0.3081).astype(dtype)
    return x, mnist.train_labels[:batch_size].astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="numba", help="fastlenet backend (default: numba)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per network")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="BLAS threads for both networks (default: 1; see the module's docstring)")
    args = parser.parse_args()
    from fastlenet.errors import FastLeNetError

    try:
        with blas_threads(args.blas_threads):
            run(args)
    except FastLeNetError as exc:  # e.g. numba not installed: one line naming the fix
        sys.exit(f"{parser.prog}: error: {exc}")


def blas_threads(n: int):
    """A context limiting BLAS to ``n`` threads; threadpoolctl (not in the quick-start
    install) does it, and without it BLAS keeps its threads and a note says so."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("note: threadpoolctl is not installed, so BLAS keeps its default threads and "
              "the timings may suffer (pip install threadpoolctl)", file=sys.stderr)
        return contextlib.nullcontext()
    return threadpool_limits(n, user_api="blas")


def run(args) -> None:
    dtype = np.dtype(args.dtype)
    x, y = mnist_batch(args.batch_size, dtype)
    nets = {"hand-written conv": LeNet5(dtype=dtype),
            f"fastlenet conv ({args.backend})": LeNet5(dtype=dtype, conv=fastlenet_conv(args.backend))}
    for net in nets.values():  # warm up: JIT compiles, caches fill
        net.train_step(x, y)
    times = {name: [] for name in nets}
    for _ in range(args.steps):
        for name, net in nets.items():
            tick = time.perf_counter()
            net.train_step(x, y)
            times[name].append(time.perf_counter() - tick)
    print(f"LeNet-5 training step, batch {args.batch_size}, {args.dtype}, {args.blas_threads} BLAS "
          f"thread(s), median of {args.steps}:")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, seconds in medians.items():
        print(f"  {name:<28} {1e3 * seconds:8.1f} ms  ({args.batch_size / seconds:,.0f} images/s)")
    slow, fast = medians.values()
    print(f"  speed-up: {slow / fast:.1f}x")


if __name__ == "__main__":
    main()
