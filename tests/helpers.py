"""Small MNIST-format datasets cut from the bundled MNIST, for quick end-to-end runs."""

import glob
import shutil
import subprocess
from pathlib import Path

import pytest

from fastlenet.data import FILES, load_dataset, write_idx


def write_tiny_mnist(folder: Path, n_train: int = 1200, n_test: int = 300) -> Path:
    """Write the first ``n_train`` / ``n_test`` MNIST images and labels as IDX files."""
    mnist = load_dataset("mnist")
    folder.mkdir(parents=True, exist_ok=True)
    arrays = (mnist.train_images[:n_train], mnist.train_labels[:n_train],
              mnist.test_images[:n_test], mnist.test_labels[:n_test])
    for stem, array in zip(FILES, arrays):
        write_idx(folder / f"{stem}.gz", array)
    return folder


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
