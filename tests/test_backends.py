"""The backend registry: names, auto, and what a missing or broken backend says."""

import sys
import types

import numpy as np
import pytest

from helpers import load_backend
from fastlenet import backends
from fastlenet.backends.base import Backend
from fastlenet.backends.reference import ReferenceBackend
from fastlenet.errors import ArrayError, BackendUnavailableError


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


# ------------------------------------------------- who implements which kernel
# Every kernel of the interface, and, for each backend, the ones its own class (or a
# class of its own module) implements. The rest it inherits from the reference: a
# visible choice here, so a backend cannot lose a kernel of its own unnoticed (its tests
# against the reference would pass trivially on the inherited copy).
KERNELS = ("to_batch_last", "from_batch_last", "conv2d_forward", "conv2d_backward",
           "maxpool2d_forward", "maxpool2d_backward", "relu_maxpool2d_forward",
           "relu_maxpool2d_backward", "avgpool2d_forward", "avgpool2d_backward",
           "conv2d_relu_maxpool2d_forward", "conv2d_relu_maxpool2d_backward", "linear_forward",
           "linear_backward", "softmax", "softmax_cross_entropy", "count_correct",
           "adam_update_device", "set_scalars", "separable_filter", "warp_bilinear",
           "batchnorm_forward", "batchnorm_backward", "tanh_forward", "tanh_backward",
           "batchnorm_relu_maxpool2d_forward", "batchnorm_relu_maxpool2d_backward",
           "gather_batch", "dense_chain_forward", "dense_chain_backward")
# base.Backend's own, each built from the kernels above (a backend may fuse them)
COMPOSITES = {"set_scalars", "gather_batch", "dense_chain_forward", "dense_chain_backward"}
OWN_KERNELS = {
    "numpy": {"to_batch_last", "conv2d_forward", "conv2d_backward", "relu_maxpool2d_forward",
              "relu_maxpool2d_backward", "batchnorm_forward", "batchnorm_backward"},
    "numba": {"to_batch_last", "conv2d_forward", "conv2d_backward", "maxpool2d_forward",
              "maxpool2d_backward", "relu_maxpool2d_forward", "relu_maxpool2d_backward",
              "avgpool2d_forward", "avgpool2d_backward", "linear_forward", "linear_backward",
              "softmax_cross_entropy", "adam_update_device", "separable_filter",
              "warp_bilinear", "conv2d_relu_maxpool2d_forward", "batchnorm_forward",
              "batchnorm_backward", "tanh_forward", "tanh_backward",
              "batchnorm_relu_maxpool2d_forward", "batchnorm_relu_maxpool2d_backward"},
    "cupy": {"conv2d_forward", "conv2d_backward", "maxpool2d_forward", "maxpool2d_backward",
             "relu_maxpool2d_forward", "relu_maxpool2d_backward", "avgpool2d_forward",
             "avgpool2d_backward", "linear_forward", "linear_backward",
             "softmax_cross_entropy", "count_correct", "adam_update_device", "set_scalars",
             "batchnorm_forward", "batchnorm_backward",
             "conv2d_relu_maxpool2d_forward", "conv2d_relu_maxpool2d_backward",
             "to_batch_last", "gather_batch", "dense_chain_forward", "dense_chain_backward"},
}


@pytest.mark.parametrize("name", list(OWN_KERNELS))
def test_each_backend_lists_the_kernels_it_implements_itself(name):
    module_name, class_name = backends._REGISTRY[name]
    module = pytest.importorskip(module_name, reason=f"the {name} backend's module needs "
                                 "a package not installed here")
    cls = getattr(module, class_name)
    own = {kernel for kernel in KERNELS
           if next(c for c in cls.__mro__ if kernel in vars(c)).__module__ == module_name}
    assert own == OWN_KERNELS[name]
    assert set(OWN_KERNELS) == set(backends._REGISTRY)  # a new backend gets a row here


def test_the_reference_implements_every_kernel_itself():
    """Every kernel but base.Backend's composites (set_scalars, a plain copy on the host;
    the batch gather and the dense chain, built from the other kernels) is the
    reference's own, so nothing a backend inherits comes from anywhere else."""
    owners = {kernel: next(c for c in ReferenceBackend.__mro__ if kernel in vars(c))
              for kernel in KERNELS}
    assert {k for k, c in owners.items() if c is not ReferenceBackend} == COMPOSITES


# --------------------------------------------------------- bad arguments, every backend
def _zeros(be, shape, dtype=np.float32):
    return be.asarray(np.zeros(shape, dtype))


_X, _W = (3, 8, 8, 2), (4, 3, 3, 3)
_ADAM = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
# (a bad call of backend ``be``, words its one-line error must hold): each shared check
BAD_CALLS = [
    (lambda be: be.conv2d_forward(_zeros(be, (3, 8, 8)), _zeros(be, _W), None, 1, 0),
     "x must be 4-d (C, H, W, N)"),
    (lambda be: be.conv2d_forward(_zeros(be, _X), _zeros(be, (4, 2, 3, 3)), None, 1, 0),
     "3 channels, weights expect 2"),
    (lambda be: be.conv2d_forward(_zeros(be, _X), _zeros(be, _W), _zeros(be, 5), 1, 0),
     "bias has shape (5,), expected (4,)"),
    (lambda be: be.conv2d_forward(_zeros(be, _X), _zeros(be, _W, np.float64), None, 1, 0),
     "w is float64 but x is float32"),
    (lambda be: be.separable_filter(_zeros(be, (2, 8, 8)), _zeros(be, (8, 8)), _zeros(be, (8, 8))),
     "a must be 4-d (F, H, W, N)"),
    (lambda be: be.separable_filter(_zeros(be, (2, 8, 8, 3)), _zeros(be, (8, 8), np.float64),
                                    _zeros(be, (8, 8))), "gh is float64 but a is float32"),
    (lambda be: be.conv2d_forward(_zeros(be, _X, np.int32), _zeros(be, _W, np.int32), None, 1, 0),
     "x is int32; the kernels take float32 or float64"),
    (lambda be: be.conv2d_forward(_zeros(be, _X), _zeros(be, _W), None, 0, 0),
     "stride must be an integer >= 1"),
    (lambda be: be.conv2d_forward(_zeros(be, _X), _zeros(be, (4, 3, 9, 9)), None, 1, 0),
     "does not fit"),
    (lambda be: be.maxpool2d_forward(_zeros(be, (3, 8)), 2, 2), "x must be 4-d (C, H, W, N)"),
    (lambda be: be.avgpool2d_forward(_zeros(be, _X), 2, 0), "stride must be an integer >= 1"),
    (lambda be: be.relu_maxpool2d_forward(_zeros(be, _X), 9, 1), "does not fit"),
    (lambda be: be.conv2d_relu_maxpool2d_forward(_zeros(be, _X), _zeros(be, _W), None, 1, 0, 0, 2),
     "size must be an integer >= 1"),
    (lambda be: be.conv2d_relu_maxpool2d_forward(_zeros(be, _X), _zeros(be, _W), None, 1, 0, 2.0, 2),
     "size must be an integer >= 1"),
    (lambda be: be.conv2d_relu_maxpool2d_forward(_zeros(be, _X), _zeros(be, _W), None, 1, 0, 7, 7),
     "does not fit"),
    (lambda be: be.conv2d_relu_maxpool2d_forward(_zeros(be, _X), _zeros(be, (4, 2, 3, 3)), None, 1,
                                                 0, 2, 2), "3 channels, weights expect 2"),
    (lambda be: be.linear_forward(_zeros(be, (5, 2)), _zeros(be, (3, 4)), None),
     "5 features, weights expect 4"),
    (lambda be: be.linear_forward(_zeros(be, (4, 2)), _zeros(be, (3, 4)), _zeros(be, 4)),
     "bias has shape (4,), expected (3,)"),
    (lambda be: be.softmax_cross_entropy(_zeros(be, (10, 4)), _zeros(be, 3, np.int64)),
     "labels must be (4,) integers"),
    (lambda be: be.softmax_cross_entropy(_zeros(be, (0, 4)), _zeros(be, 4, np.int64)),
     "logits have no classes (K = 0)"),
    (lambda be: be.count_correct(_zeros(be, (0, 4)), _zeros(be, 4, np.int64),
                                 be.xp.zeros((), dtype=np.int64)),
     "logits have no classes (K = 0)"),
    (lambda be: be.softmax_cross_entropy(_zeros(be, (10, 4)), _zeros(be, 4)),
     "labels must be (4,) integers"),
    (lambda be: be.separable_filter(_zeros(be, (2, 8, 8, 3)), _zeros(be, (8, 8)), _zeros(be, (7, 7))),
     "do not fit maps of 8x8"),
    (lambda be: be.warp_bilinear(_zeros(be, _X), _zeros(be, (6, 3)), None, 0.0),
     "coeffs has shape (6, 3), expected (6, 2)"),
    (lambda be: be.warp_bilinear(_zeros(be, _X), _zeros(be, (6, 2)), _zeros(be, (2, 8, 8, 3)), 0.0),
     "displacement has shape (2, 8, 8, 3), expected (2, 8, 8, 2)"),
    (lambda be: be.batchnorm_forward(_zeros(be, (3, 4)), *(_zeros(be, 2) for _ in range(4)),
                                     training=True, momentum=0.1, eps=1e-5),
     "gamma has 2 values, x has 3 channels"),
    (lambda be: be.batchnorm_forward(_zeros(be, (3, 4)), *(_zeros(be, 3, np.float64)
                                                           for _ in range(4)),
                                     training=True, momentum=0.1, eps=1e-5),
     "gamma is float64 but x is float32"),
    (lambda be: be.adam_update(_zeros(be, 6), _zeros(be, 5), _zeros(be, 6), _zeros(be, 6),
                               **_ADAM), "the gradient is float32[5]"),
    (lambda be: be.adam_update(_zeros(be, (6, 2))[:, 0], *(_zeros(be, 6) for _ in range(3)),
                               **_ADAM), "parameter must be C-contiguous"),
]


@pytest.fixture(scope="module", params=["numpy", "numba", "cupy-on-cpu",
                                        pytest.param("cupy", marks=pytest.mark.gpu)])
def any_backend(request):
    return load_backend(request.param)


@pytest.mark.parametrize("call, words", BAD_CALLS, ids=[w for _, w in BAD_CALLS])
def test_bad_arguments_get_the_same_one_line_error_on_every_backend(any_backend, call, words):
    with pytest.raises(ArrayError) as info:
        call(any_backend)
    assert words in str(info.value) and "\n" not in str(info.value)
