"""Shared fixtures: the backend fixture every kernel, layer and model test runs on.

Each test body is written once; it runs on every backend registered and usable here
(numpy always; later backends join by their registry entry). Tests marked ``gpu`` or
``slow`` are deselected by default.
"""

import pytest

from fastlenet import backends

from helpers import write_tiny_mnist


@pytest.fixture(params=backends.usable())
def backend(request):
    return backends.get_backend(request.param)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A 1,200 / 300 image cut of MNIST in IDX files, for quick end-to-end runs."""
    return write_tiny_mnist(tmp_path_factory.mktemp("tiny-mnist"))
