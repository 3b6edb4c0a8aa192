"""One LeNet-5 training epoch: fastlenet (a backend, numpy by default) against PyTorch CPU.

Both sides train the same model (conv 6@5x5, ReLU, max-pool 2, conv 16@5x5, ReLU,
max-pool 2, FC 400-120-84-10 with ReLU; softmax cross-entropy; Adam lr 1e-3) on the
same preprocessed MNIST images, batch 128, float32, in one process. Epochs are
interleaved (fastlenet, torch, fastlenet, torch, ...) so that the machine's drift and
other users' load hit both alike; the medians and their ratio are reported.

    python benchmarks/epoch_vs_torch.py --repeats 3 --images 60000
    python benchmarks/epoch_vs_torch.py --profile        # per-kernel time of fastlenet's step

``--profile`` wraps every kernel of the backend with a timer, runs training steps of the
real model, and prints each kernel call's time (per step and per epoch); what is left
of the step is layer code outside the kernels (the FC ReLUs, batch gathering, Python).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time
from collections import defaultdict

import numpy as np

from fastlenet.backends import get_backend
from fastlenet.data import load_dataset, prepare
from fastlenet.errors import FastLeNetError
from fastlenet.nn import SoftmaxCrossEntropy, build_model
from fastlenet.optim import Adam

# The kernels a LeNet-5 training step may call (those --profile times).
KERNELS = ("conv2d_forward", "conv2d_backward", "relu_maxpool2d_forward",
           "relu_maxpool2d_backward", "maxpool2d_forward", "maxpool2d_backward",
           "linear_forward", "linear_backward", "softmax_cross_entropy", "adam_update",
           "to_batch_last")


def import_torch():
    try:
        import torch
    except ImportError as exc:
        raise FastLeNetError(f"PyTorch is needed for the comparison but does not import "
                             f"({exc}); install torch, or run with --profile alone") from exc
    return torch


def machine() -> str:
    """CPU model, cores and library versions, for the report's first lines."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    torch = import_torch()
    lines = [f"cpu: {cpu}, {os.cpu_count()} cores",
             f"numpy {np.__version__}, torch {torch.__version__} "
             f"({torch.get_num_threads()} threads)"]
    try:
        from threadpoolctl import threadpool_info
        lines += [f"blas: {info['internal_api']} {info.get('version')} "
                  f"({info.get('architecture')}, {info['num_threads']} threads) {info['prefix']}"
                  for info in threadpool_info() if info["user_api"] == "blas"]
    except ImportError:
        lines.append("blas: unknown (threadpoolctl not installed)")
    return "\n".join(lines)


def load_images(n: int, synthetic: bool) -> tuple[np.ndarray, np.ndarray]:
    """(n, 1, 32, 32) float32 training images and (n,) int64 labels."""
    if synthetic:
        rng = np.random.default_rng(0)
        return (rng.standard_normal((n, 1, 32, 32), dtype=np.float32),
                rng.integers(0, 10, n))
    data = prepare(load_dataset("mnist"), val_size=0)
    return data.x_train[:n], data.y_train[:n]


# ------------------------------------------------------------------------ fastlenet
class FastLeNetRun:
    """fastlenet's LeNet-5, loss and Adam on one backend; :meth:`epoch` trains one epoch."""

    def __init__(self, backend_name: str, x: np.ndarray, y: np.ndarray, batch: int):
        self.backend = backend = get_backend(backend_name)
        self.model = build_model("lenet5", backend, seed=0)
        self.loss = SoftmaxCrossEntropy(backend=backend)
        self.optimizer = Adam(self.model.parameters(), backend, lr=1e-3)
        self.x, self.y = backend.asarray(x), backend.asarray(y)
        self.batch = batch
        self.rng = np.random.default_rng(1)

    def step(self, idx) -> object:
        backend = self.backend
        xb = backend.to_batch_last(self.x[idx])
        loss = self.loss.forward(self.model.forward(xb), self.y[idx])
        self.model.backward(self.loss.backward())
        self.optimizer.step()
        return loss

    def epoch(self, steps: int | None = None) -> float:
        """Train one epoch (or its first ``steps`` batches); returns the mean loss."""
        perm = self.backend.asarray(self.rng.permutation(len(self.y)))
        starts = range(0, len(self.y), self.batch)[:steps]
        losses = [self.step(perm[s:s + self.batch]) for s in starts]
        self.backend.synchronize()
        return float(np.mean([float(self.backend.to_numpy(v)) for v in losses]))


# ---------------------------------------------------------------------------- torch
class TorchRun:
    """The same model, loss and optimizer in PyTorch (CPU, 2 threads, float32)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch: int, threads: int):
        torch = import_torch()
        nn = torch.nn
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        self.torch = torch
        self.model = nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.batch = batch
        self.generator = torch.Generator().manual_seed(1)

    def epoch(self, steps: int | None = None) -> float:
        torch = self.torch
        perm = torch.randperm(len(self.y), generator=self.generator)
        losses = []
        for s in range(0, len(self.y), self.batch)[:steps]:
            idx = perm[s:s + self.batch]
            loss = torch.nn.functional.cross_entropy(self.model(self.x[idx]), self.y[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
        return float(torch.stack(losses).mean())


def timed(fn) -> tuple[float, float]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def compare(args, x, y) -> None:
    ours = FastLeNetRun(args.backend, x, y, args.batch_size)
    theirs = TorchRun(x, y, args.batch_size, args.threads)
    print(machine())
    for run in (ours, theirs):  # warm-up: first-touch allocations, caches, JIT
        run.epoch(steps=20)
    times = {"fastlenet": [], "torch": []}
    for r in range(args.repeats):
        for name, run in (("fastlenet", ours), ("torch", theirs)):
            seconds, loss = timed(run.epoch)
            times[name].append(seconds)
            print(f"repeat {r + 1}: {name:9s} {seconds:7.3f} s  (mean loss {loss:.4f})",
                  flush=True)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n{len(y)} images, batch {args.batch_size}, {args.repeats} interleaved repeats")
    print(f"median s/epoch: fastlenet-{args.backend} {med['fastlenet']:.3f}, "
          f"torch {med['torch']:.3f}")
    per_repeat = ", ".join(f"{a / b:.3f}" for a, b in zip(times["fastlenet"], times["torch"]))
    ratio = med["fastlenet"] / med["torch"]
    print(f"ratio fastlenet/torch: {ratio:.3f} (per repeat: {per_repeat})")


# -------------------------------------------------------------------------- profile
def profile(args, x, y) -> None:
    """Time every kernel call of real training steps, keyed by kernel and input shape."""
    run = FastLeNetRun(args.backend, x, y, args.batch_size)
    backend = run.backend
    spent: dict[tuple[str, tuple], list[float]] = defaultdict(list)
    depth = [0]  # a kernel calling another (fused ops) is timed once, as the outer call

    def timer(name, kernel):
        @functools.wraps(kernel)
        def wrapper(*a, **kw):
            depth[0] += 1
            start = time.perf_counter()
            try:
                out = kernel(*a, **kw)
                backend.synchronize()
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                spent[(name, tuple(a[0].shape))].append(time.perf_counter() - start)
            return out
        return wrapper

    run.epoch(steps=20)  # warm-up, untimed
    for name in KERNELS:  # instance attributes shadow the class's methods
        setattr(backend, name, timer(name, getattr(backend, name)))
    steps = args.profile_steps
    try:
        seconds, _ = timed(lambda: run.epoch(steps=steps))
    finally:
        for name in KERNELS:
            delattr(backend, name)
    steps_per_epoch = -(-len(y) // args.batch_size)
    print(f"\nfastlenet-{args.backend}: {steps} steps of batch {args.batch_size}. Per kernel "
          "and input shape, ms per step from the median and from the fastest call (the\n"
          "fastest is the one to compare on a loaded machine), and s per "
          f"{steps_per_epoch}-step epoch from the median")
    print(f"  {'kernel':24s} {'input':18s} {'median':>8s}    {'fastest':>8s}    {'epoch':>7s}")
    total = best = 0.0
    for (name, shape), calls in spent.items():
        per_step = statistics.median(calls) * len(calls) / steps
        fastest = min(calls) * len(calls) / steps
        total, best = total + per_step, best + fastest
        print(f"  {name:24s} {str(shape):18s} {1e3 * per_step:8.3f} ms {1e3 * fastest:8.3f} ms "
              f"{per_step * steps_per_epoch:7.3f} s")
    step = seconds / steps
    print(f"  {'kernels':43s} {1e3 * total:8.3f} ms {1e3 * best:8.3f} ms "
          f"{total * steps_per_epoch:7.3f} s")
    print(f"  {'outside kernels (whole step - kernels)':43s} {1e3 * (step - total):8.3f} ms "
          f"{'':11s} {(step - total) * steps_per_epoch:7.3f} s")
    print(f"  {'whole step (mean)':43s} {1e3 * step:8.3f} ms {'':11s} "
          f"{step * steps_per_epoch:7.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved epochs of each")
    parser.add_argument("--images", type=int, default=60000, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--backend", default="numpy", help="fastlenet backend")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--synthetic", action="store_true",
                        help="random images instead of MNIST (speed does not depend on values)")
    parser.add_argument("--profile", action="store_true",
                        help="print fastlenet's per-kernel times instead of comparing")
    parser.add_argument("--profile-steps", type=int, default=100)
    args = parser.parse_args()
    try:
        x, y = load_images(args.images, args.synthetic)
        if args.profile:
            profile(args, x, y)
        else:
            compare(args, x, y)
    except FastLeNetError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
