"""Where a fastlenet training step spends its time, kernel by kernel.

    python -m benchmarks.kernel_profile [--backend numba] [--model compact] [--steps 100]
                                        [--images 60000]

Wraps every kernel a training step of a zoo model (LeNet-5 unless told) may call with a
timer that synchronizes the device, trains ``--steps`` steps of batch 128 on real MNIST
after 20 untimed ones, and prints each kernel's time per step (from the median call, and from the fastest, the one
to compare on a loaded machine) and per 60,000-image epoch. What is left of the step is
code outside the kernels (the FC ReLUs, batch gathering, Python). A kernel calling
another (a fused op built from plain ones) is timed once, as the outer call.

A tool for working on a backend; the figures to publish come from the benchmark suite.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections import defaultdict

from fastlenet.backends import names
from fastlenet.errors import BackendUnavailableError

from .lenet import BATCH, MODEL, MODELS, FastLeNetRun, load_training_set

KERNELS = ("conv2d_relu_maxpool2d_forward", "conv2d_relu_maxpool2d_backward",
           "conv2d_forward", "conv2d_backward", "relu_maxpool2d_forward",
           "relu_maxpool2d_backward", "maxpool2d_forward", "maxpool2d_backward",
           "linear_forward", "linear_backward", "softmax_cross_entropy", "adam_update",
           "to_batch_last", "batchnorm_relu_maxpool2d_forward",
           "batchnorm_relu_maxpool2d_backward", "batchnorm_forward", "batchnorm_backward",
           "avgpool2d_forward", "avgpool2d_backward", "tanh_forward", "tanh_backward",
           "dropout_forward", "dropout_backward")
WARMUP_STEPS = 20
EPOCH_IMAGES = 60000


def profile(backend_name: str, steps: int, images: int, model: str = MODEL) -> str:
    """Train ``steps`` timed steps of ``model`` with every kernel wrapped; the report as
    text."""
    x, y = load_training_set(images)
    run = FastLeNetRun(backend_name, x, y, model=model)
    backend = run.backend
    spent: dict[tuple[str, tuple], list[float]] = defaultdict(list)
    depth = [0]

    def timer(name, kernel):
        @functools.wraps(kernel)
        def wrapper(*args, **kwargs):
            depth[0] += 1
            start = time.perf_counter()
            try:
                out = kernel(*args, **kwargs)
                backend.synchronize()
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                # the input's shape; a batch gathered by index: the batch's, not the set's
                shape = tuple(args[0].shape)
                if name == "to_batch_last" and len(args) > 1 and args[1] is not None:
                    shape = (len(args[1]), *shape[1:])
                spent[(name, shape)].append(time.perf_counter() - start)
            return out
        return wrapper

    run.epoch(steps=WARMUP_STEPS)
    for name in KERNELS:  # instance attributes shadow the class's methods
        setattr(backend, name, timer(name, getattr(backend, name)))
    try:
        start = time.perf_counter()
        order = run.order()
        for i in range(steps):
            s = (i * BATCH) % (run.n - BATCH + 1)
            run.step(order[s:s + BATCH])
        run.synchronize()
        seconds = time.perf_counter() - start
    finally:
        for name in KERNELS:
            delattr(backend, name)
    per_epoch = -(-EPOCH_IMAGES // BATCH)
    lines = [f"fastlenet {backend_name}, {model}: {steps} steps of batch {BATCH}. Per kernel and input "
             "shape: ms per step from the median and from the fastest call, and s per "
             f"{per_epoch}-step epoch from the median",
             f"  {'kernel':30s} {'input':18s} {'median':>8s}    {'fastest':>8s}    {'epoch':>7s}"]
    total = best = 0.0
    for (name, shape), calls in spent.items():
        per_step = statistics.median(calls) * len(calls) / steps
        fastest = min(calls) * len(calls) / steps
        total, best = total + per_step, best + fastest
        lines.append(f"  {name:30s} {str(shape):18s} {1e3 * per_step:8.3f} ms {1e3 * fastest:8.3f} ms "
                     f"{per_step * per_epoch:7.3f} s")
    step = seconds / steps
    lines += [f"  {'kernels':49s} {1e3 * total:8.3f} ms {1e3 * best:8.3f} ms {total * per_epoch:7.3f} s",
              f"  {'outside kernels (whole step - kernels)':49s} {1e3 * (step - total):8.3f} ms "
              f"{'':11s} {(step - total) * per_epoch:7.3f} s",
              f"  {'whole step (mean)':49s} {1e3 * step:8.3f} ms {'':11s} {step * per_epoch:7.3f} s"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernel_profile",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="auto", choices=names())
    parser.add_argument("--model", default=MODEL, choices=MODELS)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--images", type=int, default=EPOCH_IMAGES,
                        help="MNIST training images to draw batches from")
    args = parser.parse_args()
    if args.steps < 1 or args.images < BATCH:
        parser.error(f"--steps must be at least 1 and --images at least {BATCH}")
    try:
        print(profile(args.backend, args.steps, args.images, args.model))
    except BackendUnavailableError as exc:
        print(f"kernel_profile: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
