"""The cupy backend's batch gather (kernels/batch.cu), on the CPU emulation of
tests/host_cuda.py (and, with marker ``gpu``, on a CUDA device): images and labels of a
training batch in one launch, equal to the reference's x[index] laid out batch innermost
and y[index], negative indices counting from the end."""

import numpy as np
import pytest

from fastlenet.backends import get_backend

from helpers import load_cuda_backend


@pytest.fixture(scope="module", params=["on-cpu", pytest.param("device", marks=pytest.mark.gpu)])
def cuda_backend(request):
    return load_cuda_backend(request.param)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, index", [
    ((7, 1, 4, 5), [3, 0, 6, 3, -1]),      # repeats and a negative index
    ((9, 2, 3, 3), [8]),                   # a batch of one
    ((5, 11), [4, 1, 2, 0, 3, -5]),        # (N, F) samples: (F, B) out
])
def test_gather_batch_equals_the_reference(cuda_backend, dtype, shape, index):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(shape).astype(dtype), rng.integers(0, 10, shape[0])
    want_x, want_y = get_backend("numpy").gather_batch(x, y, np.array(index))
    xb, yb = cuda_backend.gather_batch(cuda_backend.asarray(x), cuda_backend.asarray(y),
                                       cuda_backend.asarray(np.array(index)))
    assert np.array_equal(cuda_backend.to_numpy(xb), want_x)
    assert np.array_equal(cuda_backend.to_numpy(yb), want_y)
    alone = cuda_backend.to_batch_last(cuda_backend.asarray(x),
                                       cuda_backend.asarray(np.array(index, dtype=np.int32)))
    assert np.array_equal(cuda_backend.to_numpy(alone), want_x)


def test_gather_batch_is_one_launch_in_a_recorded_step():
    load_cuda_backend("on-cpu")  # skips where the emulation cannot run
    import host_cuda

    backend = host_cuda.load_module().CupyBackend()  # one whose steps record, as on a GPU
    x = backend.asarray(np.arange(24, dtype=np.float32).reshape(6, 1, 2, 2))
    y = backend.asarray(np.arange(6))
    run = backend.capture_step(lambda index: backend.gather_batch(x, y, index))
    run(backend.asarray(np.array([0, 1, 2])))  # the warm-up, as plain launches
    run(backend.asarray(np.array([3, 4, 5])))  # the recording
    (recording,) = run.graphs.values()
    assert [function.name for function, *_ in recording.graph.tape] == ["gather_batch_f32"]
    index = backend.asarray(np.array([5, 1, 2]))
    xb, yb = run(index)  # a replay, reading the new indices in place of the recorded ones
    assert np.array_equal(backend.to_numpy(yb), [5, 1, 2])
    assert np.array_equal(backend.to_numpy(xb)[..., 0], np.arange(20, 24).reshape(1, 2, 2))
