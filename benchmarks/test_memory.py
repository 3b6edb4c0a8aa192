"""Peak memory and startup of LeNet-5 training, each case in a fresh process
(``python -m benchmarks.footprint``), so no case inherits another's peak or warm caches.

* ``test_peak_memory``: resident set size at batch 128 and 1024 (``--steps`` training
  steps over the whole 60,000-image training set, as the trainer holds it): before the
  steps, the peak during them, and the process's peak with data preparation.
* ``test_startup``: import, setup and the first training step in a process whose compile
  caches are empty (``cold``: the JIT or kernel compilation itself), then in one that finds
  them filled by the first (``warm``: what every later run pays).

The benchmark's own time for these is the child process's wall time; the figures to read
are in ``extra_info``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .torch_contenders import TORCH_CONTENDERS

ROOT = Path(__file__).resolve().parents[1]

# where compiled backends keep their compiled kernels: pointed at a fresh folder per
# contender, so that "cold" really compiles and "warm" reads what "cold" wrote
COMPILE_CACHE_VARIABLES = ("NUMBA_CACHE_DIR", "CUPY_CACHE_DIR")
MEMORY_BATCH_SIZES = (128, 1024)
MEMORY_STEPS = 10
STARTUP_STEPS = 3


def footprint(contender: str, cache_dir, batch: int, steps: int, images: int | None,
              torch_threads: int | None) -> dict:
    """Run benchmarks/footprint.py in a new process; its JSON report."""
    if contender in TORCH_CONTENDERS and TORCH_CONTENDERS[contender][0] == "cuda":
        pytest.skip("the footprint measures a process's host memory and start-up on the CPU; "
                    f"{contender} is timed per step and per epoch")
    command = [sys.executable, "-m", "benchmarks.footprint", contender,
               "--batch-size", str(batch), "--steps", str(steps)]
    if images is not None:
        command += ["--images", str(images)]
    if torch_threads is not None:
        command += ["--torch-threads", str(torch_threads)]
    env = {**os.environ, **{name: str(cache_dir) for name in COMPILE_CACHE_VARIABLES}}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command[1:])} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope="session")
def _cold_starts():
    return {}


@pytest.fixture
def compile_cache(contender, _cold_starts, tmp_path_factory, pytestconfig):
    """(folder, report): a compile cache filled by a cold-start run of ``contender`` in
    a fresh process (made once per session), and that run's report."""
    if contender not in _cold_starts:
        folder = tmp_path_factory.mktemp(f"compile-cache-{contender}")
        report = footprint(contender, folder, 128, STARTUP_STEPS,
                           pytestconfig.getoption("--epoch-images"),
                           pytestconfig.getoption("--torch-threads"))
        _cold_starts[contender] = folder, report
    return _cold_starts[contender]


@pytest.mark.long
def test_startup(benchmark, contender, compile_cache, pytestconfig):
    folder, cold = compile_cache
    benchmark.group = "startup"
    warm = benchmark.pedantic(footprint, args=(contender, folder, 128, STARTUP_STEPS,
                                               pytestconfig.getoption("--epoch-images"),
                                               pytestconfig.getoption("--torch-threads")), rounds=1)
    benchmark.extra_info.update(cold=cold, warm=warm)


@pytest.mark.long
@pytest.mark.parametrize("memory_batch", MEMORY_BATCH_SIZES)
def test_peak_memory(benchmark, contender, memory_batch, compile_cache, pytestconfig):
    folder, _ = compile_cache
    benchmark.group = "peak memory"
    report = benchmark.pedantic(footprint, args=(contender, folder, memory_batch, MEMORY_STEPS,
                                                 pytestconfig.getoption("--epoch-images"),
                                                 pytestconfig.getoption("--torch-threads")),
                                rounds=1)
    benchmark.extra_info.update(report)
