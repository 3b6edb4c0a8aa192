"""What several test files share: a tiny MNIST cut, backends to test, the command run as
a user runs it, its one-line errors, and a model with every exportable layer."""

import glob
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastlenet import backends
from fastlenet.data import FILES, load_dataset, write_idx
from fastlenet.nn import (AvgPool2d, BatchNorm, Conv2d, Dropout, Flatten, Linear, MaxPool2d, Model,
                          ReLU, ReLUMaxPool2d, Sequential, Sigmoid, Tanh)


# ------------------------------------------------------------------ data
def write_tiny_mnist(folder: Path, n_train: int = 1200, n_test: int = 300) -> Path:
    """Write the first ``n_train`` / ``n_test`` MNIST images and labels as IDX files."""
    mnist = load_dataset("mnist")
    folder.mkdir(parents=True, exist_ok=True)
    arrays = (mnist.train_images[:n_train], mnist.train_labels[:n_train],
              mnist.test_images[:n_test], mnist.test_labels[:n_test])
    for stem, array in zip(FILES, arrays):
        write_idx(folder / f"{stem}.gz", array)
    return folder


# -------------------------------------------------------------- backends
def cuda_device_present() -> bool:
    """Whether this machine has an NVIDIA GPU, whatever CuPy makes of it: the driver lists
    one (/proc/driver/nvidia/gpus, /dev/nvidiaN), or ``nvidia-smi -L`` does."""
    if glob.glob("/proc/driver/nvidia/gpus/*") or glob.glob("/dev/nvidia[0-9]*"):
        return True
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def skip_unless_cuda_device(why: str) -> None:
    """Skip a GPU test with ``why`` where this machine has no CUDA device; FAIL where it
    has one and the backend is unusable all the same (missing libraries, a broken
    install): that must not pass as a skip."""
    if cuda_device_present():
        pytest.fail(f"this machine has an NVIDIA GPU, but {why}")
    pytest.skip(why)


def load_backend(name: str):
    """A backend by registry name, or ``"cupy-on-cpu"``: the cupy backend with its CUDA
    kernels run on the CPU; a skip saying why where it cannot run here."""
    if name == "cupy-on-cpu":
        return load_cuda_backend("on-cpu")
    if name == "cupy":
        return load_cuda_backend("device")
    why = backends.status()[name]
    if why is not None:
        pytest.skip(why)
    return backends.get_backend(name)


def load_cuda_backend(where: str):
    """The cupy backend with its CUDA kernels run ``"on-cpu"`` (tests/host_cuda.py: the
    real .cu sources compiled with g++) or on a CUDA ``"device"``; a skip naming what is
    missing otherwise."""
    if where == "device":
        why = backends.status()["cupy"]
        if why is not None:
            skip_unless_cuda_device(why)  # a GPU here with a backend that fails: a failure
        return backends.get_backend("cupy")
    if shutil.which("g++") is None:
        pytest.skip("no host C++ compiler (g++) to run the CUDA kernels on the CPU")
    if importlib.util.find_spec("fastlenet.kernels") is None:
        pytest.skip("fastlenet.kernels is not importable (see "
                    "test_every_kernel_source_ships_in_the_package)")
    import host_cuda

    return host_cuda.load_backend()


# ---------------------------------------------------------- the command
# A user error is "fastlenet: error: MESSAGE" (what main reports), or argparse's one line
# for a subcommand's bad option, which names the subcommand and points at its --help
_USAGE_ERROR = re.compile(r"fastlenet (\w+): error: .+ \(see 'fastlenet \1 --help'\)")


def run_cli(*args):
    """Run the installed command in a fresh process, as a user would."""
    return subprocess.run([sys.executable, "-m", "fastlenet", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(result, *fragments):
    """A user error as the command reports it: one line on stderr holding every fragment,
    no traceback, in one of the command's two forms (``_USAGE_ERROR``). ``result`` is a
    finished :func:`run_cli` process, whose exit status must be 2, or the stderr text of
    an in-process ``main`` call."""
    if isinstance(result, subprocess.CompletedProcess):
        assert result.returncode == 2, result.stderr
        stderr = result.stderr
    else:
        stderr = result
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("fastlenet: error: ") or _USAGE_ERROR.fullmatch(lines[0]), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ------------------------------------------------------------------ models
def custom_model():
    """Every exportable layer, the options the zoo does not use, a nested Sequential."""
    model = Model([Conv2d(1, 4, 3, stride=2, padding=1, bias=False), BatchNorm(4), Sigmoid(),
                   AvgPool2d(3, stride=2), Conv2d(4, 6, 3, padding=1), Tanh(), MaxPool2d(3, stride=2),
                   Conv2d(6, 6, 1), ReLUMaxPool2d(2, stride=1), Flatten(), Dropout(0.3),
                   Linear(6 * 2 * 2, 12, bias=False), BatchNorm(12), Sequential(ReLU(), Linear(12, 5))],
                  name="custom", backend="numpy", seed=3)
    rng = np.random.default_rng(0)
    state = {k: v + 0.1 * rng.standard_normal(v.shape).astype(v.dtype) if "running_var" not in k
             else rng.uniform(0.5, 2.0, v.shape).astype(v.dtype) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    return model.eval()
