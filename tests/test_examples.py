"""examples/numpy_lenet5.py, the README's drop-in example: the hand-written NumPy LeNet-5
computes the same loss and gradients with fastlenet's convolution on every backend."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "numpy_lenet5.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("numpy_lenet5", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hand_written_conv_matches_fastlenet(example, backend):
    from fastlenet import functional as F

    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((3, 2, 9, 9)), rng.standard_normal((4, 2, 5, 5)), rng.standard_normal(4)
    out, cache = example.conv_forward(x, w, b)
    y, ctx = F.conv2d(x, w, b, backend=backend.name)
    np.testing.assert_allclose(backend.to_numpy(y), out, rtol=1e-10, atol=1e-10)
    dout = rng.standard_normal(out.shape)
    for ours, theirs in zip(F.conv2d_backward(dout, ctx), example.conv_backward(dout, cache)):
        np.testing.assert_allclose(backend.to_numpy(ours), theirs, rtol=1e-10, atol=1e-10)


def test_swapping_the_conv_changes_no_result(example, backend):
    x, y = example.mnist_batch(16, np.float64)
    plain = example.LeNet5(dtype=np.float64)
    swapped = example.LeNet5(dtype=np.float64, conv=example.fastlenet_conv(backend.name))
    loss, grads = plain.loss_and_grads(x, y)
    loss_swapped, grads_swapped = swapped.loss_and_grads(x, y)
    assert loss_swapped == pytest.approx(loss, rel=1e-12)
    for name, g in grads.items():
        np.testing.assert_allclose(grads_swapped[name], g, rtol=1e-9, atol=1e-12, err_msg=name)
    assert plain.train_step(x, y) == pytest.approx(swapped.train_step(x, y), rel=1e-12)


def test_the_timing_script_runs():
    result = subprocess.run([sys.executable, str(EXAMPLE), "--backend", "numpy", "--batch-size", "8",
                             "--steps", "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "speed-up:" in result.stdout and "fastlenet conv (numpy)" in result.stdout


def test_the_example_runs_after_the_quick_start_install():
    """The README's quick start installs numba but not threadpoolctl: the example runs
    without it (BLAS threads then left as they are, and it says so in one line)."""
    script = ("import runpy, sys; sys.modules['threadpoolctl'] = None; "  # import raises
              f"sys.argv = [{str(EXAMPLE)!r}, '--batch-size', '8', '--steps', '1']; "
              f"runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "speed-up:" in result.stdout
    note = [line for line in result.stderr.splitlines() if "threadpoolctl" in line]
    assert len(note) == 1 and "pip install threadpoolctl" in note[0], result.stderr
