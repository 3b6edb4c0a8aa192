"""Shared fixtures: the backend fixture every kernel, layer and model test runs on.

Each test body is written once; it runs on every backend usable here (numpy always;
numba and cupy when installed and usable). Tests marked ``gpu`` are deselected by default.
"""

import pytest

from fastlenet import backends


@pytest.fixture(params=backends.usable())
def backend(request):
    return backends.get_backend(request.param)
