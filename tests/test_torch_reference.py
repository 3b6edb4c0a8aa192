"""The whole model against PyTorch: logits, loss and every parameter gradient.

Always against the committed fixtures (tests/fixtures/*.npz, written by
tests/torch_reference.py), and live against torch when it is installed.
"""

import numpy as np
import pytest

from fastlenet import nn as fnn
from fastlenet.nn import SoftmaxCrossEntropy, build_model

from torch_reference import FIXTURES, MODELS, mnist_batch, torch_reference


def fastlenet_pass(name, backend, dtype, params, x, y):
    """Logits (N, K), loss and gradients of fastlenet's model in train mode."""
    model = build_model(name, backend, dtype=dtype)
    model.load_state_dict(params)
    model.train()
    for layer in model.layers:  # deterministic, as the reference
        if isinstance(layer, fnn.Dropout):
            layer.p = 0.0
    loss_fn = SoftmaxCrossEntropy(backend=backend)
    logits = model.forward(backend.to_batch_last(backend.asarray(x, dtype=dtype)))
    loss = loss_fn.forward(logits, backend.asarray(y))
    model.backward(loss_fn.backward())
    grads = {k: backend.to_numpy(p.grad) for k, p in model.named_parameters().items()}
    return backend.to_numpy(backend.from_batch_last(logits)), float(backend.to_numpy(loss)), grads


def assert_matches(ours, ref, rtol):
    """Each array within ``rtol`` of its own largest reference magnitude."""
    logits, loss, grads = ours
    scale = np.abs(ref["logits"]).max()
    np.testing.assert_allclose(logits, ref["logits"], rtol=0, atol=rtol * scale)
    assert loss == pytest.approx(float(ref["loss"]), rel=rtol)
    assert grads.keys() == ref["grads"].keys()
    for key, g in grads.items():
        want = ref["grads"][key]
        np.testing.assert_allclose(g, want, rtol=0, atol=rtol * np.abs(want).max(), err_msg=key)


def load_fixture(name):
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    params = {k[len("param/"):]: v for k, v in data.items() if k.startswith("param/")}
    ref = {"logits": data["logits"], "loss": data["loss"],
           "grads": {k[len("grad/"):]: v for k, v in data.items() if k.startswith("grad/")}}
    return data["x"], data["y"], params, ref


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-9), ("float32", 2e-4)])
def test_model_matches_pytorch_fixture(name, dtype, rtol, backend):
    x, y, params, ref = load_fixture(name)
    assert_matches(fastlenet_pass(name, backend, dtype, params, x, y), ref, rtol)


@pytest.mark.torch
@pytest.mark.parametrize("name", MODELS)
def test_model_matches_pytorch_live(name, backend):
    pytest.importorskip("torch")
    x, y = mnist_batch(24)
    params = build_model(name, "numpy", dtype="float64", seed=7).state_dict()
    ref = torch_reference(name, params, x, y)
    assert_matches(fastlenet_pass(name, backend, "float64", params, x, y), ref, 1e-9)


def test_fixture_batch_exercises_max_pool_ties():
    """The trap the fixtures must cover: windows of equal values after ReLU (blank paper)."""
    x, _, params, _ = load_fixture("lenet5")
    from fastlenet.backends import get_backend

    be = get_backend("numpy")
    w, b = params["0.weight"], params["0.bias"]
    y, _ = be.conv2d_forward(be.to_batch_last(x), w, b, 1, 0)
    relu = np.maximum(y, 0).reshape(6, 14, 2, 14, 2, -1)
    windows = relu.transpose(0, 1, 3, 5, 2, 4).reshape(-1, 4)
    tied = (windows == windows.max(axis=1, keepdims=True)).sum(axis=1) > 1
    assert tied.mean() > 0.05
