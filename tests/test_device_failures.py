"""Device failures are one line: the CUDA kernels run on the CPU (tests/host_cuda.py) with a
failure injected where a GPU would raise it: out of memory at an allocation, a device lost
at a synchronization mid-training, NVRTC or the driver failing as the backend starts."""

import sys

import numpy as np
import pytest

from fastlenet import backends
from fastlenet.checkpoint import load_checkpoint
from fastlenet.cli import main

from helpers import assert_one_line_error, load_cuda_backend, write_tiny_mnist


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """Fewer test images than the shared cut: the emulated kernels evaluate them slowly."""
    return write_tiny_mnist(tmp_path_factory.mktemp("tinier"), n_train=200, n_test=40)


@pytest.fixture
def stand_in(monkeypatch):
    """The stand-in ``cupy`` module; the registry builds its backend fresh, as a new process."""
    load_cuda_backend("on-cpu")  # skips where the kernels cannot run on the CPU
    import host_cuda

    module = host_cuda.make_module()
    monkeypatch.setattr(backends, "_instances", {})
    monkeypatch.setattr(backends, "_failures", {})

    def register():
        backend_module = host_cuda.load_module(module)
        monkeypatch.setitem(sys.modules, "stand_in_cupy_backend", backend_module)
        monkeypatch.setitem(backends._REGISTRY, "cupy", ("stand_in_cupy_backend", "CupyBackend"))
        backend = backends.get_backend("cupy")
        backend.capture_step = lambda step, signature=None: step  # as host_cuda.load_backend
        return backend

    module.register = register
    return module


def fail_on_call(function, n, error):
    """``function``, but its ``n``-th call raises ``error``."""
    calls = [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise error
        return function(*args, **kwargs)
    return wrapped


def train(tiny_dir, out, *extra):
    return main(["train", "--backend", "cupy", "--data-dir", str(tiny_dir), "--limit", "32",
                 "--val-size", "16", "--batch-size", "32", "--epochs", "2", "--out", str(out),
                 "--no-progress", *extra])


def test_out_of_memory_names_the_batch_size_and_the_free_memory(stand_in, tiny_dir, tmp_path, capsys):
    stand_in.register()
    stand_in.empty = fail_on_call(stand_in.empty, 40, stand_in.cuda.memory.OutOfMemoryError(2**30, 3 * 2**30))
    assert train(tiny_dir, tmp_path / "run") == 2
    assert_one_line_error(capsys.readouterr().err,
                          "the cupy device ran out of memory training with --batch-size 32 "
                          "(OutOfMemoryError: Out of memory allocating 1,073,741,824 bytes",
                          "; 12.00 of 16.0 GiB free); train with a smaller --batch-size")


def test_a_device_lost_mid_training_keeps_and_names_the_last_checkpoint(stand_in, tiny_dir, tmp_path,
                                                                         capsys):
    backend = stand_in.register()
    lost = stand_in.cuda.runtime.CUDARuntimeError("cudaErrorLaunchFailure: unspecified launch failure")
    # each epoch ends with one synchronize: the second epoch's raises, as an async error would
    backend.synchronize = fail_on_call(backend.synchronize, 2, lost)
    out = tmp_path / "run"
    assert train(tiny_dir, out) == 2
    assert_one_line_error(capsys.readouterr().err,
                          "the cupy device failed in epoch 2 of 2 (CUDARuntimeError: "
                          "cudaErrorLaunchFailure: unspecified launch failure); once it works again",
                          f"{out / 'last.npz'} holds epoch 1; continue with: fastlenet train --resume {out}")
    kept = load_checkpoint(out)
    assert kept.meta["epoch"] == 1 and all(np.isfinite(v).all() for v in kept.params.values())
    assert not (out / ".fastlenet.lock").exists()


def test_nvrtc_failing_at_start_is_one_line(stand_in, tiny_dir, tmp_path, capsys):
    class Broken(stand_in.RawModule):
        def compile(self):
            raise RuntimeError("NVRTCError: NVRTC_ERROR_BUILTIN_OPERATION_FAILURE (7)\nlog...")

    stand_in.RawModule = Broken
    with pytest.raises(backends.BackendUnavailableError):
        stand_in.register()
    assert train(tiny_dir, tmp_path / "run") == 2
    assert_one_line_error(capsys.readouterr().err, "backend 'cupy' is not usable here",
                          "NVRTC cannot compile kernels/", "NVRTC_ERROR_BUILTIN_OPERATION_FAILURE",
                          "pip install")
    assert not (tmp_path / "run").exists()


def test_a_driver_error_at_start_is_one_line(stand_in, tiny_dir, tmp_path, capsys):
    def too_old():
        raise stand_in.cuda.runtime.CUDARuntimeError(
            "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version")

    stand_in.cuda.runtime.getDeviceCount = too_old
    with pytest.raises(backends.BackendUnavailableError):
        stand_in.register()
    assert train(tiny_dir, tmp_path / "run") == 2
    assert_one_line_error(capsys.readouterr().err, "CuPy finds no usable CUDA device",
                          "cudaErrorInsufficientDriver", "usable backends: ")
    assert not (tmp_path / "run").exists()


def test_the_stand_in_raises_cupys_own_types_where_cupy_keeps_them():
    """What the backend catches is where CuPy keeps it, with the message CuPy gives (CuPy
    imports without a GPU; where it is absent, the stand-in's paths go unchecked)."""
    cupy = pytest.importorskip("cupy")
    import host_cuda

    stand_in = host_cuda.make_module().cuda
    for path in ("memory.OutOfMemoryError", "runtime.CUDARuntimeError", "driver.CUDADriverError",
                 "runtime.memGetInfo"):
        part, name = path.split(".")
        assert hasattr(getattr(cupy.cuda, part), name) and hasattr(getattr(stand_in, part), name), path
    assert issubclass(cupy.cuda.memory.OutOfMemoryError, MemoryError)
    assert str(cupy.cuda.memory.OutOfMemoryError(2**30, 3 * 2**30)) == str(
        stand_in.memory.OutOfMemoryError(2**30, 3 * 2**30))
    assert str(cupy.cuda.runtime.CUDARuntimeError(719)) == (
        "cudaErrorLaunchFailure: unspecified launch failure")  # the message the test above uses
