"""The backend registry: names, auto, and what a missing or broken backend says."""

import sys
import types

import pytest

from fastlenet import backends
from fastlenet.backends.base import Backend
from fastlenet.errors import BackendUnavailableError


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry's tables, so fake entries do not leak."""
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    monkeypatch.setattr(backends, "_instances", dict(backends._instances))
    monkeypatch.setattr(backends, "_failures", {})
    return backends._REGISTRY


def test_numpy_is_usable_and_auto_falls_back_to_it():
    assert "numpy" in backends.usable()
    assert backends.get_backend("numpy").name == "numpy"
    assert backends.get_backend("auto").name in backends.usable()
    assert backends.status()["numpy"] is None


def test_unknown_backend_lists_the_choices():
    with pytest.raises(BackendUnavailableError, match="unknown backend 'tpu'; choose one of: .*numpy.*auto"):
        backends.get_backend("tpu")


def test_missing_dependency_is_quoted_with_the_usable_backends(registry):
    registry["fakegpu"] = ("fastlenet_no_such_module", "FakeBackend")
    with pytest.raises(BackendUnavailableError) as info:
        backends.get_backend("fakegpu")
    message = str(info.value)
    assert "backend 'fakegpu' is not usable here" in message
    assert "No module named 'fastlenet_no_such_module'" in message  # the original error
    assert f"usable backends: {', '.join(backends.usable())}" in message
    assert "numpy" in backends.usable() and "\n" not in message
    assert "fakegpu" in backends.status() and backends.status()["fakegpu"]


def test_backend_missing_a_kernel_is_reported_unusable(registry, monkeypatch):
    class Incomplete(Backend):  # no kernels at all
        name = "incomplete"

    module = types.ModuleType("fake_incomplete_backend")
    module.Incomplete = Incomplete
    monkeypatch.setitem(sys.modules, "fake_incomplete_backend", module)
    registry["incomplete"] = ("fake_incomplete_backend", "Incomplete")
    with pytest.raises(BackendUnavailableError, match="abstract"):
        backends.get_backend("incomplete")


def test_auto_skips_unusable_backends(registry):
    registry.clear()
    registry["broken"] = ("fastlenet_no_such_module", "X")
    registry["numpy"] = ("fastlenet.backends.numpy_backend", "NumpyBackend")
    assert backends.get_backend("auto").name == "numpy"


def test_softmax_is_stable_and_matches_the_loss_gradient(backend):
    import numpy as np

    rng = np.random.default_rng(0)
    z = rng.standard_normal((10, 7)) * 1e4  # exp of these overflows without the shift
    labels = rng.integers(0, 10, 7)
    p = backend.to_numpy(backend.softmax(backend.asarray(z)))
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=0), 1.0)
    _, grad = backend.softmax_cross_entropy(backend.asarray(z), backend.asarray(labels))
    onehot = np.eye(10)[:, labels]
    np.testing.assert_allclose(backend.to_numpy(grad), (p - onehot) / 7, atol=1e-12)
