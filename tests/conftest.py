"""Shared fixtures: the backend fixture every kernel, layer and model test runs on.

Each test body is written once; it runs on every backend registered and usable here
(numpy always; later backends join by their registry entry). Tests marked ``gpu`` or
``slow`` are deselected by default.
"""

import importlib.util
import shutil

import pytest

# before its first import: the shared checks in helpers.py report failures as a test's do
pytest.register_assert_rewrite("helpers")

from fastlenet import backends  # noqa: E402

from helpers import skip_unless_cuda_device, write_tiny_mnist  # noqa: E402


@pytest.fixture(params=backends.usable())
def backend(request):
    return backends.get_backend(request.param)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A 1,200 / 300 image cut of MNIST in IDX files, for quick end-to-end runs."""
    return write_tiny_mnist(tmp_path_factory.mktemp("tiny-mnist"))


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


@pytest.fixture(scope="session")
def zoo_checkpoints(tiny_dir, tmp_path_factory):
    """{model name: best.npz} for every zoo model, trained 2 epochs on the tiny cut (about
    1.5 s in all), so that exports and the demo page see weights with peaked outputs."""
    from fastlenet import TrainConfig, train
    from fastlenet.nn import MODELS

    folder = tmp_path_factory.mktemp("zoo")
    found = {}
    for name in MODELS:
        train(TrainConfig(model=name, backend="numpy", epochs=2, batch_size=50, val_size=100,
                          lr=3e-3, data_dir=str(tiny_dir)), out=folder / name, progress=False)
        found[name] = folder / name / "best.npz"
    return found
