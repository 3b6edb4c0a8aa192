"""Shared fixtures: the backend fixture every kernel, layer and model test runs on.

Each test body is written once; it runs on every backend registered and usable here
(numpy always; later backends join by their registry entry). Tests marked ``gpu`` or
``slow`` are deselected by default.
"""

import os
import shutil
import tempfile

import pytest

# before its first import: the shared checks in helpers.py report failures as a test's do
pytest.register_assert_rewrite("helpers")

from fastlenet import backends  # noqa: E402

from helpers import write_tiny_mnist  # noqa: E402


def pytest_configure(config):
    """Per-machine kernel choices (fastlenet.tuning) go to a folder of this test session,
    shared by the CLI subprocesses it starts, never to the user's cache."""
    os.environ["FASTLENET_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastlenet-tuning-")


def pytest_unconfigure(config):
    shutil.rmtree(os.environ.pop("FASTLENET_CACHE_DIR", ""), ignore_errors=True)


@pytest.fixture(params=backends.usable())
def backend(request):
    return backends.get_backend(request.param)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A 1,200 / 300 image cut of MNIST in IDX files, for quick end-to-end runs."""
    return write_tiny_mnist(tmp_path_factory.mktemp("tiny-mnist"))


@pytest.fixture(scope="session")
def zoo_checkpoints(tiny_dir, tmp_path_factory):
    """{model name: best.npz} for every zoo model, trained 2 epochs on the tiny cut, so
    that exports and the demo page see weights with peaked outputs."""
    from fastlenet import TrainConfig, train
    from fastlenet.nn import MODELS

    folder = tmp_path_factory.mktemp("zoo")
    found = {}
    for name in MODELS:
        train(TrainConfig(model=name, backend="numpy", epochs=2, batch_size=50, val_size=100,
                          lr=3e-3, data_dir=str(tiny_dir)), out=folder / name, progress=False)
        found[name] = folder / name / "best.npz"
    return found
