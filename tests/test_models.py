"""The model zoo: sizes, summary, shapes, whole-model gradients, state round trips, errors."""

import numpy as np
import pytest

from fastlenet.errors import BackendUnavailableError, CheckpointError, ConfigError, DataError
from fastlenet.nn import (MODELS, Conv2d, Flatten, Linear, Model, ReLUMaxPool2d,
                          SoftmaxCrossEntropy, build_model)
from fastlenet.nn.conv import Conv2dReLUMaxPool2d
from fastlenet.nn.regularization import BatchNormReLUMaxPool2d


def images(n, seed=0):
    """Host (N, 1, 32, 32) float64 inputs, roughly normalised."""
    return np.random.default_rng(seed).standard_normal((n, 1, 32, 32))


def host(backend, arrays):
    return [backend.to_numpy(a) for a in arrays]


def test_parameter_counts():
    assert build_model("lenet5").num_parameters() == 61_706
    assert build_model("lenet5-classic").num_parameters() == 61_706
    compact = build_model("compact")
    assert compact.num_parameters() <= 202_620
    for name in MODELS:
        model = build_model(name)
        counted = sum(int(np.prod(p.shape)) for p in model.parameters())
        assert counted == model.num_parameters() == sum(r["params"] for r in model.summary())


def test_lenet5_summary():
    model = build_model("lenet5")
    rows = model.summary()
    assert rows[0] == {"index": 0, "kind": "Conv2d(1, 6, 5)", "output_shape": (6, 28, 28),
                       "params": 156, "connections": 122_304}
    assert [r["output_shape"] for r in rows][-6:] == [(400,), (120,), (120,), (84,), (84,), (10,)]
    assert rows[7]["connections"] == 48_120  # linear: OUT * (IN + 1)
    text = model.summary_text()
    assert "122,304" in text and "61,706" in text and "total" in text
    assert len(text.splitlines()) == len(rows) + 4  # title, header, input, layers, total


def test_the_executed_plan_is_visible():
    """lenet5's two conv + ReLU + max-pool blocks run as two Conv2dReLUMaxPool2d steps,
    holding the model's own Conv2d layers; every other step is the layer as written, and
    the summary says which layers run fused."""
    model = build_model("lenet5")
    assert len(model.layers) == 12 and len(model.plan) == 8
    fused = [step for step in model.plan if isinstance(step, Conv2dReLUMaxPool2d)]
    assert [repr(step) for step in fused] == ["Conv2d(1, 6, 5)+ReLU+MaxPool2d(2)",
                                              "Conv2d(6, 16, 5)+ReLU+MaxPool2d(2)"]
    assert [step.conv for step in fused] == [model.layers[0], model.layers[3]]
    assert [i for i in sorted(model.fused)] == [0, 1, 2, 3, 4, 5]
    assert [s for s in model.plan if not isinstance(s, Conv2dReLUMaxPool2d)] == \
        [layer for i, layer in enumerate(model.layers) if i not in model.fused]
    text = model.summary_text().splitlines()
    assert text[1].endswith("runs as") and text[-1].endswith("8 steps")
    assert [line.split()[0] for line in text if line.endswith("fused")] == ["0", "3"]
    assert [line.split()[0] for line in text if line.endswith("(same step)")] == ["1", "2", "4", "5"]
    # with batch norm between conv and ReLU, the batch norm, ReLU and max-pool run fused
    steps = [type(step) for step in build_model("compact").plan]
    assert Conv2dReLUMaxPool2d not in steps and ReLUMaxPool2d not in steps
    assert steps.count(BatchNormReLUMaxPool2d) == 2


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_shapes_and_dtype(backend, name):
    model = build_model(name, backend)
    assert model.input_shape == (1, 32, 32) and model.num_classes == 10
    assert model.dtype == np.float32
    logits = model.forward(backend.to_batch_last(backend.asarray(images(3), dtype="float32")))
    assert logits.shape == (10, 3) and logits.dtype == np.float32
    assert all(p.data.dtype == np.float32 for p in model.parameters())


@pytest.mark.parametrize("name", list(MODELS))
def test_whole_model_gradient(backend, name):
    """Directional FD of the loss over every parameter at once, float64, tiny batch."""
    model = build_model(name, backend, dtype="float64", seed=3)
    rng = np.random.default_rng(4)
    x = backend.to_batch_last(backend.asarray(images(3, seed=5)))
    labels = backend.asarray(np.array([1, 7, 3]))
    loss_fn = SoftmaxCrossEntropy(0.1, backend=backend)
    params = model.named_parameters()
    theta0 = {k: backend.to_numpy(p.data).copy() for k, p in params.items()}
    rng_state = backend.rng_state(model.rng)  # compact has Dropout: same mask every time

    def loss(t, v):
        for k, p in params.items():
            p.data[...] = backend.asarray(theta0[k] + t * v[k])
        backend.set_rng_state(model.rng, rng_state)
        return float(backend.to_numpy(loss_fn.forward(model.forward(x), labels)))

    zero = {k: np.zeros_like(a) for k, a in theta0.items()}
    loss(0.0, zero)
    assert model.backward(loss_fn.backward()) is None
    grads = {k: backend.to_numpy(p.grad) for k, p in params.items()}
    assert all(np.any(g != 0) for g in grads.values())
    v = {k: rng.standard_normal(a.shape) for k, a in theta0.items()}
    # moving every parameter at once shifts tens of thousands of ReLU inputs: a tiny
    # step keeps all of them on their side of 0 (1e-6 already crosses one in compact)
    h = 1e-8
    numeric = (loss(h, v) - loss(-h, v)) / (2 * h)
    np.testing.assert_allclose(numeric, sum(np.sum(grads[k] * v[k]) for k in params), rtol=1e-6)
    first = next(iter(params))  # a single coordinate of the first layer's weight too
    e = np.zeros_like(theta0[first])
    e.flat[7] = 1.0
    h = 1e-6
    numeric = (loss(h, {**zero, first: e}) - loss(-h, {**zero, first: e})) / (2 * h)
    np.testing.assert_allclose(numeric, grads[first].flat[7], rtol=1e-5, atol=1e-10)


def test_first_layer_computes_no_input_gradient(backend, monkeypatch):
    model = build_model("lenet5", backend)
    seen = []
    conv_backward = backend.conv2d_backward
    monkeypatch.setattr(backend, "conv2d_backward",
                        lambda dy, ctx, need_dx=True: seen.append(need_dx)
                        or conv_backward(dy, ctx, need_dx))
    logits = model.forward(backend.to_batch_last(backend.asarray(images(2), dtype="float32")))
    model.backward(logits)
    assert seen == [True, False]  # conv2 then conv1


def test_state_dict_round_trip(backend):
    source = build_model("compact", backend, seed=1)
    x = backend.to_batch_last(backend.asarray(images(4), dtype="float32"))
    source.forward(x)  # training mode: moves the BatchNorm running statistics
    state = source.state_dict()
    assert {"0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var"} <= set(state)
    assert "0.bias" not in state  # convs feeding BatchNorm carry no bias
    assert all(isinstance(a, np.ndarray) for a in state.values())

    target = build_model("compact", backend, seed=2)
    kept = target.parameters()[0].data
    target.load_state_dict(state)
    assert target.parameters()[0].data is kept  # in place: optimizers keep their references
    for key, value in target.state_dict().items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    source.eval(), target.eval()
    np.testing.assert_array_equal(*host(backend, [source.forward(x), target.forward(x)]))

    state["0.weight"][...] = 123.0  # a copy: the model is unaffected
    assert not np.any(backend.to_numpy(source.parameters()[0].data) == 123.0)


def test_load_state_dict_errors():
    model = build_model("lenet5")
    state = model.state_dict()
    wrong_shape = {**state, "0.weight": np.zeros((20, 1, 9, 9))}
    with pytest.raises(CheckpointError, match=r"checkpoint is for another model: 0\.weight has "
                       r"shape \(20, 1, 9, 9\), model 'lenet5' expects \(6, 1, 5, 5\)"):
        model.load_state_dict(wrong_shape)
    missing = {k: v for k, v in state.items() if k != "9.bias"}
    with pytest.raises(CheckpointError, match=r"it has no 9\.bias"):
        model.load_state_dict(missing)
    with pytest.raises(CheckpointError, match=r"it has 12\.weight, which model 'lenet5' does not"):
        model.load_state_dict({**state, "12.weight": np.zeros(3)})
    with pytest.raises(CheckpointError,
                       match=r"another model: it has no 0\.bias, which model 'lenet5' needs"):
        model.load_state_dict(build_model("compact").state_dict())
    with pytest.raises(CheckpointError, match="0.bias holds <U"):
        model.load_state_dict({**state, "0.bias": np.array(["x"] * 6)})
    # nothing was changed by the failed loads
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, state[key])


def test_build_model_errors():
    with pytest.raises(ConfigError, match="unknown model 'lenet6'; choose one of: lenet5, "
                       "lenet5-classic, compact"):
        build_model("lenet6")
    with pytest.raises(ConfigError, match="unsupported dtype 'float16'; choose one of: "
                       "float32, float64"):
        build_model("lenet5", dtype="float16")
    with pytest.raises(ConfigError, match="unsupported dtype 'fp32'"):
        build_model("lenet5", dtype="fp32")
    with pytest.raises(ConfigError, match="seed must be an integer >= 0"):
        build_model("lenet5", seed=-1)
    with pytest.raises(BackendUnavailableError):
        build_model("lenet5", backend="no-such-backend")


def test_custom_model_must_end_in_class_scores():
    with pytest.raises(ConfigError, match="must end in class scores"):
        Model([Conv2d(1, 4, 5)], name="maps")
    tiny = Model([Conv2d(1, 2, 5), Flatten(), Linear(2 * 28 * 28, 3)], name="tiny")
    assert tiny.num_classes == 3 and tiny[0].need_dx is False


def test_seed_determines_weights(backend):
    a, b = build_model("lenet5", backend, seed=7), build_model("lenet5", backend, seed=7)
    c = build_model("lenet5", backend, seed=8)
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(value, b.state_dict()[key])
    assert not np.array_equal(a.state_dict()["0.weight"], c.state_dict()["0.weight"])
    # every backend starts from the host-drawn weights of the numpy reference
    np.testing.assert_array_equal(a.state_dict()["3.weight"],
                                  build_model("lenet5", "numpy", seed=7).state_dict()["3.weight"])


def test_parameter_names_and_eval_mode(backend):
    model = build_model("compact", backend)
    assert [p.name for p in model.parameters()] == list(model.named_parameters())
    assert model.named_parameters()["13.weight"].shape == (96, 1600)
    x = backend.to_batch_last(backend.asarray(images(3), dtype="float32"))
    model.eval()
    assert not any(layer.training for layer in model.layers)
    np.testing.assert_array_equal(*host(backend, [model.forward(x), model.forward(x)]))
    model.train()
    assert all(layer.training for layer in model.layers)
    assert not np.array_equal(*host(backend, [model.forward(x), model.forward(x)]))  # dropout


def test_predict_proba(backend):
    model = build_model("lenet5", backend)
    proba = model.predict_proba(images(5).astype(np.float32), batch_size=2)
    assert isinstance(proba, np.ndarray) and proba.shape == (5, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(proba >= 0)
    assert model.training  # the mode is restored
    logits = model.eval().forward(backend.to_batch_last(backend.asarray(images(5), "float32")))
    assert np.array_equal(proba.argmax(axis=1), backend.to_numpy(logits).argmax(axis=0))
    with pytest.raises(DataError, match=r"takes images of shape \('N', 1, 32, 32\)"):
        model.predict_proba(np.zeros((2, 28, 28)))
    with pytest.raises(DataError, match="must be floats"):
        model.predict_proba(np.zeros((2, 1, 32, 32), dtype=np.uint8))


def test_forward_rejects_wrong_layout(backend):
    model = build_model("lenet5", backend)
    with pytest.raises(DataError, match="batch last"):
        model.forward(backend.asarray(images(2), dtype="float32"))  # NCHW, not (1,32,32,N)
