"""Startup time and peak memory of LeNet-5 training, measured in a process of its own.

    python -m benchmarks.footprint CONTENDER [--batch-size 128] [--steps 10] [--images 60000]

CONTENDER is a fastlenet backend or ``torch``. The process imports the contender's
library, loads ``--images`` MNIST training images (the trainer holds the whole training
set; 60,000 by default), builds LeNet-5 and Adam, trains ``--steps`` steps, and prints one
JSON object (times in seconds, memory in MB of 2**20 bytes):

* ``import_s``, ``data_s``, ``setup_s``: importing the library and loading the backend,
  loading the images, building the model and optimizer and uploading the images;
* ``first_step_s``: the first training step, with any JIT or kernel compilation (or its
  load from a compile cache); ``step_s``: the median of the later steps;
* ``to_first_step_s``: from this module's start to the end of the first step;
* ``rss_before_steps_mb``: the resident set size once everything is set up (the images
  are resident by then);
* ``training_peak_rss_mb``: the peak resident set size during the training steps (Linux:
  the kernel's peak counter is reset before the first step; elsewhere None);
* ``peak_rss_mb``: the process's peak over its whole life, data preparation included.

The benchmarks (benchmarks/test_memory.py) run it once per case, so one case's peak
never hides another's.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402  (the clock starts before the imports it measures)
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (ru_maxrss is in KB on Linux,
    in bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB; None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak resident set size (VmHWM) to the current one; False where
    that is not possible (not Linux, or a kernel without it)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_mb("VmHWM") is not None


def measure(contender: str, batch: int, steps: int, images: int,
            torch_threads: int | None = None) -> dict:
    tick = time.perf_counter()
    from fastlenet.backends import status

    from . import lenet, torch_contenders

    torch_contenders.torch_threads = torch_threads
    if contender == "torch":
        torch_contenders.import_torch()
    elif status().get(contender, "unknown backend") is not None:  # loads every backend
        usable = [name for name, why in status().items() if why is None]
        print(f"footprint: error: cannot measure '{contender}' "
              f"({status().get(contender, 'unknown backend')}); choose from: "
              f"{', '.join(usable + ['torch'])}", file=sys.stderr)
        sys.exit(2)
    import_s = time.perf_counter() - tick

    tick = time.perf_counter()
    x, y = lenet.load_training_set(images)
    data_s = time.perf_counter() - tick

    tick = time.perf_counter()
    run = lenet.make_run(contender, x, y, batch)
    order = run.index(np.random.default_rng(0).permutation(len(y)))
    setup_s = time.perf_counter() - tick
    rss_before_steps = _status_mb("VmRSS")
    setup_peak = peak_rss_mb()
    can_reset = reset_peak_rss()  # on Linux this resets ru_maxrss as well

    seconds = []
    for i in range(steps):
        tick = time.perf_counter()
        start = (i * batch) % (len(y) - batch + 1)
        run.step(order[start:start + batch])
        run.synchronize()
        seconds.append(time.perf_counter() - tick)
        if i == 0:
            to_first_step = time.perf_counter() - START
    return {"contender": contender, "batch_size": batch, "steps": steps, "images": len(y),
            "import_s": import_s, "data_s": data_s, "setup_s": setup_s,
            "first_step_s": seconds[0],
            "step_s": statistics.median(seconds[1:]) if steps > 1 else None,
            "to_first_step_s": to_first_step,
            "rss_before_steps_mb": rss_before_steps,
            "training_peak_rss_mb": _status_mb("VmHWM") if can_reset else None,
            "peak_rss_mb": max(setup_peak, peak_rss_mb())}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.footprint",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("contender", help="a fastlenet backend, or torch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--images", type=int, default=60000)
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads (default: one per usable core)")
    args = parser.parse_args()
    for name in ("batch_size", "steps", "images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.images < args.batch_size:
        parser.error("--images must be at least --batch-size")
    print(json.dumps(measure(args.contender, args.batch_size, args.steps, args.images,
                             args.torch_threads)))


if __name__ == "__main__":
    main()
