"""Layer backward passes against central finite differences (float64), layer semantics,
the fused ReLU+MaxPool step and the loss.

Gradient checks follow Chainer's ``check_backward``: for a random output weighting dy and
a random direction v over the input and every parameter, the directional derivative
d/dt <dy, f(x + t v_x; theta + t v_theta)> by central differences must equal
<backward(dy), v_x> + sum <grad theta, v_theta>; a few single coordinates are checked
the same way. Max-pool inputs are tie-free and ReLU inputs stay away from 0, so no
finite-difference step crosses a kink.
"""

import numpy as np
import pytest

from fastlenet.errors import ConfigError
from fastlenet.nn import (AvgPool2d, BatchNorm, Conv2d, Dropout, Flatten, Linear, MaxPool2d,
                          ReLU, ReLUMaxPool2d, Sequential, Sigmoid, SoftmaxCrossEntropy, Tanh)
from fastlenet.nn.conv import Conv2dReLUMaxPool2d
from fastlenet.nn.dense_chain import DenseChain
from fastlenet.nn.regularization import BatchNormReLUMaxPool2d
from fastlenet.nn.init import glorot_uniform, he_normal, lecun_normal


def bind(layer, backend, seed=0):
    return layer.bind(backend, "float64", np.random.default_rng(seed), backend.default_rng(seed))


def tie_free(rng, shape, offset=0.0):
    """Distinct values at least 0.01 apart (a shuffled grid), centred on ``offset``."""
    n = int(np.prod(shape))
    return (rng.permutation(n) - n / 2).reshape(shape) * 0.01 + offset


def away_from_zero(rng, shape, margin=0.1):
    return rng.choice([-1.0, 1.0], size=shape) * (margin + rng.random(shape))


def check_backward(backend, layer, x, *, h=1e-6, rtol=1e-6, atol=1e-9, before_forward=None,
                   coordinates=3):
    """Directional and coordinate-wise FD check of ``layer``'s dx and parameter grads.

    ``before_forward`` runs before every forward (Dropout: reset its generator).
    """
    rng = np.random.default_rng(12345)
    prepare = before_forward or (lambda: None)
    params = layer.named_parameters()
    theta0 = {k: backend.to_numpy(p.data).copy() for k, p in params.items()}

    prepare()
    y = backend.to_numpy(layer.forward(backend.asarray(x)))
    dy = rng.standard_normal(y.shape)
    dx = backend.to_numpy(layer.backward(backend.asarray(dy)))
    grads = {k: backend.to_numpy(p.grad) for k, p in params.items()}
    assert dx.shape == x.shape
    for k, g in grads.items():
        assert g.shape == theta0[k].shape, k

    def objective(t, vx, vtheta):
        for k, p in params.items():
            p.data[...] = backend.asarray(theta0[k] + t * vtheta[k])
        prepare()
        out = layer.forward(backend.asarray(x + t * vx))
        return float(np.sum(dy * backend.to_numpy(out)))

    def fd(vx, vtheta):
        return (objective(h, vx, vtheta) - objective(-h, vx, vtheta)) / (2 * h)

    zero_theta = {k: np.zeros_like(v) for k, v in theta0.items()}
    vx = rng.standard_normal(x.shape)
    vtheta = {k: rng.standard_normal(v.shape) for k, v in theta0.items()}
    analytic = np.sum(dx * vx) + sum(np.sum(grads[k] * vtheta[k]) for k in params)
    np.testing.assert_allclose(fd(vx, vtheta), analytic, rtol=rtol, atol=atol)

    for _ in range(coordinates):
        e = np.zeros(x.shape)
        i = tuple(rng.integers(0, s) for s in x.shape)
        e[i] = 1.0
        np.testing.assert_allclose(fd(e, zero_theta), dx[i], rtol=rtol, atol=atol)
        for k, v in theta0.items():
            e = np.zeros(v.shape)
            j = tuple(rng.integers(0, s) for s in v.shape)
            e[j] = 1.0
            np.testing.assert_allclose(fd(np.zeros(x.shape), {**zero_theta, k: e}),
                                       grads[k][j], rtol=rtol, atol=atol, err_msg=k)
    for k, p in params.items():
        p.data[...] = backend.asarray(theta0[k])


# ------------------------------------------------------------------- conv, linear
@pytest.mark.parametrize("stride,padding,bias", [(1, 0, True), (2, 1, True), (1, 2, False),
                                                 (3, 1, True)])
def test_conv2d_gradients(backend, stride, padding, bias):
    layer = bind(Conv2d(3, 4, 3, stride=stride, padding=padding, bias=bias), backend)
    if bias:  # a nonzero bias, so a wrong bias gradient cannot hide
        layer.bias.data[...] = backend.asarray(np.linspace(-0.5, 0.5, 4))
    x = np.random.default_rng(0).standard_normal((3, 8, 7, 2))
    check_backward(backend, layer, x)


def test_conv2d_output_shape_and_summary_counts():
    c1 = Conv2d(1, 6, 5)
    assert c1.output_shape((1, 32, 32)) == (6, 28, 28)
    assert c1.describe((1, 32, 32)) == ("Conv2d(1, 6, 5)", 156, 122_304)
    strided = Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
    assert strided.output_shape((3, 8, 7)) == (4, 4, 4)
    assert strided.describe((3, 8, 7))[1:] == (108, 4 * 4 * 4 * 27)


def test_conv2d_without_input_gradient_gives_the_same_weight_gradients(backend):
    rng = np.random.default_rng(1)
    x = backend.asarray(rng.standard_normal((2, 6, 6, 3)))
    dy = backend.asarray(rng.standard_normal((3, 4, 4, 3)))
    full, first = bind(Conv2d(2, 3, 3), backend), bind(Conv2d(2, 3, 3), backend)
    first.need_dx = False
    full.forward(x)
    first.forward(x)
    assert full.backward(dy) is not None
    assert first.backward(dy) is None
    np.testing.assert_allclose(backend.to_numpy(first.weight.grad),
                               backend.to_numpy(full.weight.grad), rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(first.bias.grad),
                               backend.to_numpy(full.bias.grad), rtol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients(backend, bias):
    layer = bind(Linear(7, 5, bias=bias), backend)
    if bias:
        layer.bias.data[...] = backend.asarray(np.linspace(-1, 1, 5))
    check_backward(backend, layer, np.random.default_rng(2).standard_normal((7, 4)))


def test_linear_rejects_wrong_input_width():
    with pytest.raises(ConfigError, match="expects 400 input features"):
        Linear(400, 120).output_shape((401,))


# -------------------------------------------------------------------- pooling
@pytest.mark.parametrize("size,stride", [(2, None), (3, 2), (2, 1)])
def test_maxpool2d_gradients(backend, size, stride):
    layer = bind(MaxPool2d(size, stride), backend)
    x = tie_free(np.random.default_rng(3), (2, 7, 6, 3))
    check_backward(backend, layer, x)


@pytest.mark.parametrize("size,stride", [(2, None), (3, 2)])
def test_avgpool2d_gradients(backend, size, stride):
    layer = bind(AvgPool2d(size, stride), backend)
    check_backward(backend, layer, np.random.default_rng(4).standard_normal((2, 7, 6, 3)))


def test_pooling_shapes_and_summary_counts():
    assert MaxPool2d(2).output_shape((6, 28, 28)) == (6, 14, 14)
    assert MaxPool2d(3, 2).output_shape((2, 7, 6)) == (2, 3, 2)
    assert AvgPool2d(2).describe((6, 28, 28)) == ("AvgPool2d(2)", 0, 14 * 14 * 6 * 4)
    with pytest.raises(ConfigError, match="does not fit"):
        MaxPool2d(5).output_shape((1, 4, 4))


# ---------------------------------------------------------------- activations
@pytest.mark.parametrize("make", [ReLU, Tanh, Sigmoid])
def test_activation_gradients(backend, make):
    x = away_from_zero(np.random.default_rng(5), (3, 4, 5, 2))
    check_backward(backend, bind(make(), backend), x)


def test_activation_values(backend):
    x = np.array([[-2.0, 0.0, 3.0]])
    assert np.array_equal(backend.to_numpy(bind(ReLU(), backend).forward(backend.asarray(x))),
                          [[0.0, 0.0, 3.0]])
    np.testing.assert_allclose(
        backend.to_numpy(bind(Sigmoid(), backend).forward(backend.asarray(x))),
        1.0 / (1.0 + np.exp(-x)), rtol=1e-14)
    np.testing.assert_allclose(
        backend.to_numpy(bind(Tanh(), backend).forward(backend.asarray(x))), np.tanh(x))


def test_sigmoid_saturates_without_overflow(backend):
    layer = bind(Sigmoid(), backend)
    y = backend.to_numpy(layer.forward(backend.asarray(np.array([[-1e4, 1e4]]))))
    assert np.array_equal(y, [[0.0, 1.0]])
    assert np.all(np.isfinite(backend.to_numpy(layer.backward(backend.asarray(np.ones((1, 2)))))))


def test_relu_gradient_is_zero_at_zero(backend):
    layer = bind(ReLU(), backend)
    layer.forward(backend.asarray(np.array([[0.0, 1.0]])))
    assert np.array_equal(backend.to_numpy(layer.backward(backend.asarray(np.ones((1, 2))))),
                          [[0.0, 1.0]])


# ------------------------------------------------------------------- flatten
def test_flatten_matches_pytorch_feature_order(backend):
    x_nchw = np.random.default_rng(6).standard_normal((3, 2, 4, 5))
    layer = bind(Flatten(), backend)
    x = backend.to_batch_last(backend.asarray(x_nchw))
    y = backend.to_numpy(layer.forward(x))
    assert np.array_equal(y, x_nchw.reshape(3, -1).T)  # torch.flatten(x, 1), transposed
    assert layer.output_shape((2, 4, 5)) == (40,)
    dx = layer.backward(backend.asarray(y))
    assert np.array_equal(backend.to_numpy(dx), backend.to_numpy(x))


# ---------------------------------------------------------------- batch norm
@pytest.mark.parametrize("shape", [(3, 4, 5, 2), (6, 5)])
def test_batchnorm_train_gradients(backend, shape):
    layer = bind(BatchNorm(shape[0]), backend)
    rng = np.random.default_rng(7)
    layer.weight.data[...] = backend.asarray(rng.uniform(0.5, 1.5, shape[0]))
    layer.bias.data[...] = backend.asarray(rng.standard_normal(shape[0]))
    x = rng.standard_normal(shape) * 2.0 + 1.0
    check_backward(backend, layer, x, h=1e-5)


def test_batchnorm_normalises_and_tracks_running_stats(backend):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 4, 5, 6)) * np.array([1.0, 2.0, 3.0])[:, None, None, None] + 5.0
    layer = bind(BatchNorm(3, momentum=0.2), backend)
    y = backend.to_numpy(layer.forward(backend.asarray(x)))
    np.testing.assert_allclose(y.mean(axis=(1, 2, 3)), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(1, 2, 3)), 1.0, rtol=1e-4)  # eps shrinks it a hair
    flat = x.reshape(3, -1)
    np.testing.assert_allclose(backend.to_numpy(layer.running_mean), 0.2 * flat.mean(axis=1))
    np.testing.assert_allclose(backend.to_numpy(layer.running_var),
                               0.8 + 0.2 * flat.var(axis=1, ddof=1))


def test_batchnorm_eval_uses_running_stats(backend):
    rng = np.random.default_rng(9)
    layer = bind(BatchNorm(4), backend)
    mean, var = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)
    gamma, beta = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    layer.running_mean[...] = backend.asarray(mean)
    layer.running_var[...] = backend.asarray(var)
    layer.weight.data[...] = backend.asarray(gamma)
    layer.bias.data[...] = backend.asarray(beta)
    layer.eval()
    x = rng.standard_normal((4, 3))
    y = backend.to_numpy(layer.forward(backend.asarray(x)))
    expected = gamma[:, None] * (x - mean[:, None]) / np.sqrt(var[:, None] + 1e-5) + beta[:, None]
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    np.testing.assert_array_equal(backend.to_numpy(layer.running_mean), mean)  # not updated
    check_backward(backend, layer, x)


def test_batchnorm_needs_two_values_per_channel_in_training(backend):
    layer = bind(BatchNorm(3), backend)
    with pytest.raises(ConfigError, match="batch size of at least 2"):
        layer.forward(backend.asarray(np.ones((3, 1))))


# ------------------------------------------------------------------- dropout
def test_dropout_train_mask_and_gradients(backend):
    rng = backend.default_rng(10)
    layer = Dropout(0.3).bind(backend, "float64", np.random.default_rng(0), rng)
    x = np.random.default_rng(11).standard_normal((5, 6, 7, 8))
    state = backend.rng_state(rng)
    y = backend.to_numpy(layer.forward(backend.asarray(x)))

    twin = backend.default_rng(0)
    backend.set_rng_state(twin, state)
    keep = backend.to_numpy(twin.random(x.shape, dtype=np.float64)) >= 0.3
    np.testing.assert_allclose(y, np.where(keep, x / 0.7, 0.0), rtol=1e-15)
    assert 0.6 < keep.mean() < 0.8

    check_backward(backend, layer, x, before_forward=lambda: backend.set_rng_state(rng, state))


def test_dropout_is_identity_in_eval(backend):
    layer = bind(Dropout(0.5), backend).eval()
    x = backend.asarray(np.random.default_rng(12).standard_normal((4, 3)))
    assert np.array_equal(backend.to_numpy(layer.forward(x)), backend.to_numpy(x))
    dy = backend.asarray(np.ones((4, 3)))
    assert np.array_equal(backend.to_numpy(layer.backward(dy)), np.ones((4, 3)))


@pytest.mark.parametrize("p", [-0.1, 1.0, "0.5"])
def test_dropout_rejects_bad_probability(p):
    with pytest.raises(ConfigError, match="Dropout: p must be"):
        Dropout(p)


# ---------------------------------------------------------------- fused step
def test_fused_relu_maxpool_matches_unfused_with_ties(backend, monkeypatch):
    rng = np.random.default_rng(13)
    # small integers: many ties, exact zeros and all-negative windows
    x = rng.integers(-2, 3, size=(3, 6, 6, 4)).astype(np.float64)
    dy = rng.standard_normal((3, 3, 3, 4))

    calls = []
    fused_forward = backend.relu_maxpool2d_forward
    monkeypatch.setattr(backend, "relu_maxpool2d_forward",
                        lambda *args: calls.append(1) or fused_forward(*args))
    fused = bind(Sequential(ReLU(), MaxPool2d(2)), backend)
    y_fused = backend.to_numpy(fused.forward(backend.asarray(x)))
    dx_fused = backend.to_numpy(fused.backward(backend.asarray(dy)))
    assert calls, "Sequential did not fuse ReLU + MaxPool2d"

    relu, pool = bind(ReLU(), backend), bind(MaxPool2d(2), backend)
    y = backend.to_numpy(pool.forward(relu.forward(backend.asarray(x))))
    dx = backend.to_numpy(relu.backward(pool.backward(backend.asarray(dy))))
    np.testing.assert_array_equal(y_fused, y)
    np.testing.assert_array_equal(dx_fused, dx)


def test_relu_maxpool_layer_on_its_own(backend):
    """ReLUMaxPool2d outside a Sequential: the same values as the pair, and the summary's
    shape and connections (the pool's plus the ReLU's one per input)."""
    x = tie_free(np.random.default_rng(16), (2, 6, 6, 3), offset=0.005)
    fused = bind(ReLUMaxPool2d(2), backend)
    pair = bind(Sequential(ReLU(), MaxPool2d(2)), backend)
    np.testing.assert_array_equal(backend.to_numpy(fused.forward(backend.asarray(x))),
                                  backend.to_numpy(pair.forward(backend.asarray(x))))
    assert fused.describe((6, 28, 28)) == ("ReLU+MaxPool2d(2)", 0, 4_704 + 4_704)
    assert repr(ReLUMaxPool2d(3, stride=2)) == "ReLU+MaxPool2d(3, stride=2)"


@pytest.mark.parametrize("pool", [MaxPool2d(2), MaxPool2d(3, stride=2)])
def test_fused_conv_relu_maxpool_matches_the_three_layers(backend, monkeypatch, pool):
    """Sequential(Conv2d, ReLU, MaxPool2d) runs as one Conv2dReLUMaxPool2d step: the same
    output, input gradient and parameter gradients as the three layers one by one, with
    ties and windows the ReLU zeroes (small integers), and no input gradient for a model's
    first layer."""
    rng = np.random.default_rng(21)
    x = rng.integers(-2, 3, size=(2, 9, 8, 5)).astype(np.float64)
    calls = []
    fused_forward = backend.conv2d_relu_maxpool2d_forward
    monkeypatch.setattr(backend, "conv2d_relu_maxpool2d_forward",
                        lambda *args: calls.append(1) or fused_forward(*args))
    fused = bind(Sequential(Conv2d(2, 3, 2, padding=1), ReLU(), pool), backend, seed=4)
    assert [type(step) for step in fused.plan] == [Conv2dReLUMaxPool2d]
    conv = fused.layers[0]  # integer weights: exact ties in the conv's output
    conv.weight.data[...] = backend.asarray(rng.integers(-1, 2, size=conv.weight.shape))
    chain = [bind(layer, backend) for layer in (Conv2d(2, 3, 2, padding=1), ReLU(), pool)]
    for name in ("weight", "bias"):
        getattr(chain[0], name).data[...] = getattr(fused.layers[0], name).data

    y_fused = fused.forward(backend.asarray(x))
    assert calls, "Sequential did not fuse Conv2d + ReLU + MaxPool2d"
    y = backend.asarray(x)
    for layer in chain:
        y = layer.forward(y)
    np.testing.assert_allclose(backend.to_numpy(y_fused), backend.to_numpy(y), rtol=1e-12)
    dy = backend.asarray(rng.standard_normal(y.shape))
    dx_fused = fused.backward(dy)
    dx = dy
    for layer in reversed(chain):
        dx = layer.backward(dx)
    np.testing.assert_allclose(backend.to_numpy(dx_fused), backend.to_numpy(dx), rtol=1e-12)
    for name in ("weight", "bias"):
        np.testing.assert_allclose(backend.to_numpy(getattr(fused.layers[0], name).grad),
                                   backend.to_numpy(getattr(chain[0], name).grad), rtol=1e-12)
    fused.need_dx = False  # a model's first layer: weights' gradients only
    fused.forward(backend.asarray(x))
    assert fused.backward(dy) is None


def test_fused_conv_relu_maxpool_gradients(backend):
    x = np.random.default_rng(22).standard_normal((2, 7, 6, 3))
    model = bind(Sequential(Conv2d(2, 3, 3, padding=1), ReLU(), MaxPool2d(2)), backend, seed=5)
    assert isinstance(model.plan[0], Conv2dReLUMaxPool2d)
    check_backward(backend, model, x)


def test_conv_relu_maxpool_step_describes_itself():
    conv = Conv2d(1, 6, 5)
    step = Conv2dReLUMaxPool2d(conv, 2, 2)
    assert repr(step) == "Conv2d(1, 6, 5)+ReLU+MaxPool2d(2)"
    assert step.output_shape((1, 32, 32)) == (6, 14, 14)
    # the convolution's parameters and connections, and the ReLU's and the pool's
    assert step.describe((1, 32, 32)) == (repr(step), 156, 122_304 + 4_704 + 4_704)
    # a conv, ReLU and max-pool not in a row are not fused; the ReLU + max-pool still is
    plan = Sequential(Conv2d(1, 2, 3), Tanh(), ReLU(), MaxPool2d(2)).plan
    assert [type(step) for step in plan] == [Conv2d, Tanh, ReLUMaxPool2d]
    # Sequential makes the step itself; one written into a Sequential is refused
    with pytest.raises(ConfigError, match="write Conv2d, ReLU\\(\\) and MaxPool2d in a row"):
        Sequential(step, Flatten())


@pytest.mark.parametrize("pool", [MaxPool2d(2), MaxPool2d(3), MaxPool2d(2, stride=1)],
                         ids=["2x2", "3x3 with leftover rows", "overlapping"])
def test_fused_batchnorm_relu_maxpool_matches_the_three_layers(backend, monkeypatch, pool):
    """Sequential(BatchNorm, ReLU, MaxPool2d) runs as one BatchNormReLUMaxPool2d step: the
    same output, running estimates, input gradient and parameter gradients as the three
    layers one by one, in training and eval mode, with a negative gamma, windows the ReLU
    zeroes, and no input gradient for a model's first layer."""
    rng = np.random.default_rng(23)
    x = tie_free(rng, (3, 8, 7, 5), offset=0.0037)
    calls = []
    fused_forward = backend.batchnorm_relu_maxpool2d_forward
    monkeypatch.setattr(backend, "batchnorm_relu_maxpool2d_forward",
                        lambda *a, **k: calls.append(1) or fused_forward(*a, **k))
    fused = bind(Sequential(BatchNorm(3, momentum=0.2), ReLU(), pool), backend)
    assert [type(step) for step in fused.plan] == [BatchNormReLUMaxPool2d]
    chain = [bind(layer, backend) for layer in (BatchNorm(3, momentum=0.2), ReLU(), pool)]
    gamma, beta = np.array([1.5, -0.7, 0.4]), np.array([0.1, 0.3, -0.2])
    for bn in (fused.layers[0], chain[0]):
        bn.weight.data[...] = backend.asarray(gamma)
        bn.bias.data[...] = backend.asarray(beta)
    dy = rng.standard_normal(fused.output_shape(x.shape[:3]) + (5,))
    for training in (True, False):
        fused.train(training)
        for layer in chain:
            layer.train(training)
        y_fused = fused.forward(backend.asarray(x))
        y = backend.asarray(x)
        for layer in chain:
            y = layer.forward(y)
        np.testing.assert_allclose(backend.to_numpy(y_fused), backend.to_numpy(y), rtol=1e-12,
                                   atol=1e-14)
        dx_fused = fused.backward(backend.asarray(dy))
        dx = backend.asarray(dy)
        for layer in reversed(chain):
            dx = layer.backward(dx)
        np.testing.assert_allclose(backend.to_numpy(dx_fused), backend.to_numpy(dx),
                                   rtol=1e-10, atol=1e-12)
        for name in ("weight", "bias"):
            np.testing.assert_allclose(backend.to_numpy(getattr(fused.layers[0], name).grad),
                                       backend.to_numpy(getattr(chain[0], name).grad), rtol=1e-10)
        for name in ("running_mean", "running_var"):
            np.testing.assert_allclose(backend.to_numpy(getattr(fused.layers[0], name)),
                                       backend.to_numpy(getattr(chain[0], name)), rtol=1e-12)
    assert len(calls) == 2, "Sequential did not fuse BatchNorm + ReLU + MaxPool2d"
    fused.need_dx = False  # a model's first layer: the parameters' gradients only
    fused.forward(backend.asarray(x))
    assert fused.backward(backend.asarray(dy)) is None
    assert fused.layers[0].weight.grad is not None


@pytest.mark.parametrize("training", [True, False])
def test_fused_batchnorm_relu_maxpool_gradients(backend, training):
    x = tie_free(np.random.default_rng(24), (2, 6, 4, 3), offset=0.0041)
    model = bind(Sequential(BatchNorm(2), ReLU(), MaxPool2d(2)), backend, seed=6)
    model.layers[0].weight.data[...] = backend.asarray(np.array([1.3, -0.8]))
    model.layers[0].bias.data[...] = backend.asarray(np.array([0.2, 0.1]))
    assert isinstance(model.plan[0], BatchNormReLUMaxPool2d)
    model.train(training)
    check_backward(backend, model, x, h=1e-5)


def test_batchnorm_relu_maxpool_step_describes_itself():
    step = BatchNormReLUMaxPool2d(BatchNorm(16), 2, 2)
    assert repr(step) == "BatchNorm(16)+ReLU+MaxPool2d(2)"
    assert step.output_shape((16, 28, 28)) == (16, 14, 14)
    with pytest.raises(ConfigError, match="write BatchNorm, ReLU\\(\\) and MaxPool2d in a row"):
        Sequential(step, Flatten())


def test_fused_relu_maxpool_gradients(backend):
    x = tie_free(np.random.default_rng(14), (2, 6, 4, 3), offset=0.005)  # none is 0
    check_backward(backend, bind(Sequential(ReLU(), MaxPool2d(2)), backend), x)


def _chain_layers(widths, bias=True):
    """Linear layers of ``widths`` (W0, ..., WL) with a ReLU between each two."""
    layers = []
    for i, (inp, out) in enumerate(zip(widths, widths[1:])):
        layers += [ReLU()] if i else []
        layers.append(Linear(inp, out, bias=bias))
    return layers


def _asking_for_chains(backend, monkeypatch):
    """The backend, asking Sequential for DenseChain steps as a backend with fused
    kernels for them does (the base's layer-by-layer default runs them)."""
    monkeypatch.setattr(backend, "fuses_dense_chain", lambda: True, raising=False)
    return backend


@pytest.mark.parametrize("widths, bias", [((7, 5, 4, 3), True), ((6, 9, 2), False),
                                          ((5, 4, 6, 3, 2), True)])
def test_dense_chain_equals_its_layers_one_by_one(backend, monkeypatch, widths, bias):
    """On a backend that asks for it, Sequential runs Linear, ReLU, ..., Linear as one
    DenseChain step; the base's default gives the bits of the layers run one by one (the
    same kernels in the same order): output, input gradient, every parameter gradient."""
    rng = np.random.default_rng(len(widths))
    x = rng.standard_normal((widths[0], 5))
    plain = bind(Sequential(*_chain_layers(widths, bias)), backend, seed=3)
    fused = bind(Sequential(*_chain_layers(widths, bias)), _asking_for_chains(backend, monkeypatch),
                 seed=3)
    assert [type(step) for step in plain.plan] == [Linear, ReLU] * (len(widths) - 2) + [Linear]
    assert [type(step) for step in fused.plan] == [DenseChain]
    assert fused.plan[0].linears == fused.layers[::2]
    assert list(fused.named_parameters()) == list(plain.named_parameters())
    y = fused.forward(backend.asarray(x))
    np.testing.assert_array_equal(backend.to_numpy(y),
                                  backend.to_numpy(plain.forward(backend.asarray(x))))
    dy = backend.asarray(rng.standard_normal(y.shape))
    np.testing.assert_array_equal(backend.to_numpy(fused.backward(dy)),
                                  backend.to_numpy(plain.backward(dy)))
    for (name, p), q in zip(fused.named_parameters().items(), plain.parameters()):
        np.testing.assert_array_equal(backend.to_numpy(p.grad), backend.to_numpy(q.grad),
                                      err_msg=name)
    fused.need_dx = False  # a model's first layer: parameter gradients only
    fused.forward(backend.asarray(x))
    assert fused.backward(dy) is None
    np.testing.assert_array_equal(backend.to_numpy(fused.layers[0].weight.grad),
                                  backend.to_numpy(plain.layers[0].weight.grad))


def test_dense_chain_gradients(backend, monkeypatch):
    x = np.random.default_rng(24).standard_normal((6, 4))
    model = bind(Sequential(*_chain_layers((6, 5, 4, 3))), _asking_for_chains(backend, monkeypatch),
                 seed=6)
    for layer in model.layers[::2]:  # nonzero biases, so a wrong bias gradient cannot hide
        layer.bias.data[...] = backend.asarray(np.linspace(-0.3, 0.4, layer.out_features))
    assert isinstance(model.plan[0], DenseChain)
    check_backward(backend, model, x)


def test_dense_chain_steps_and_what_they_describe(monkeypatch):
    """Which runs of layers become a chain (two Linear layers at least, ReLU between each
    two), and the step's name and summary counts (the layers' plus the ReLUs')."""
    from fastlenet.backends import get_backend

    backend = _asking_for_chains(get_backend("numpy"), monkeypatch)

    def plan(*layers):
        return [type(step) for step in bind(Sequential(*layers), backend).plan]
    assert plan(Flatten(), *_chain_layers((8, 4, 3)), ReLU()) == [Flatten, DenseChain, ReLU]
    assert plan(Linear(8, 4), ReLU(), Linear(4, 3), ReLU(), Dropout(0.5), Linear(3, 2)) == \
        [DenseChain, ReLU, Dropout, Linear]
    assert plan(Linear(8, 4), Tanh(), Linear(4, 3)) == [Linear, Tanh, Linear]
    assert plan(Linear(8, 4), ReLU(), ReLU(), Linear(4, 3)) == [Linear, ReLU, ReLU, Linear]
    assert plan(Linear(8, 4), ReLU()) == [Linear, ReLU]
    lenet = _chain_layers((400, 120, 84, 10))
    step = DenseChain(lenet[::2])
    assert repr(step) == "Linear(400, 120)+ReLU+Linear(120, 84)+ReLU+Linear(84, 10)"
    assert step.output_shape((400,)) == (10,)
    assert step.describe((400,)) == (repr(step), 59_134, 48_120 + 120 + 10_164 + 84 + 850)
    with pytest.raises(ConfigError, match="write Linear, ReLU\\(\\) and Linear in a row"):
        Sequential(step)
    with pytest.raises(ConfigError, match="expects 400 input features"):
        step.output_shape((399,))


def test_sequential_stops_backward_at_first_parameterised_layer(backend):
    seq = bind(Sequential(Dropout(0.2), Linear(4, 3), ReLU(), Linear(3, 2)), backend)
    seq.need_dx = False
    assert not seq[1].need_dx and seq[3].need_dx
    seq.forward(backend.asarray(away_from_zero(np.random.default_rng(15), (4, 5))))
    assert seq.backward(backend.asarray(np.ones((2, 5)))) is None
    assert all(p.grad is not None for p in seq.parameters())
    assert list(seq.named_parameters()) == ["1.weight", "1.bias", "3.weight", "3.bias"]


def test_sequential_names_the_layer_whose_input_does_not_fit():
    seq = Sequential(Conv2d(1, 6, 5), Flatten(), Linear(100, 10))
    with pytest.raises(ConfigError, match=r"layer 2: Linear\(100, 10\) expects 100"):
        seq.output_shape((1, 32, 32))


# ---------------------------------------------------------------------- loss
def naive_cross_entropy(z, labels, s):
    k, n = z.shape
    q = np.full((k, n), s / k)
    q[labels, np.arange(n)] += 1.0 - s
    m = z.max(axis=0)
    log_softmax = z - m - np.log(np.exp(z - m).sum(axis=0))
    return -(q * log_softmax).sum(axis=0).mean()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_value_and_gradient(backend, smoothing):
    rng = np.random.default_rng(16)
    z = rng.standard_normal((10, 6)) * 3.0
    labels = rng.integers(0, 10, 6)
    loss_fn = SoftmaxCrossEntropy(smoothing, backend=backend)
    lab = backend.asarray(labels)
    loss = loss_fn.forward(backend.asarray(z), lab)
    assert backend.to_numpy(loss).shape == ()
    np.testing.assert_allclose(float(backend.to_numpy(loss)),
                               naive_cross_entropy(z, labels, smoothing), rtol=1e-12)
    grad = backend.to_numpy(loss_fn.backward())

    def f(t, v):
        return float(backend.to_numpy(loss_fn.forward(backend.asarray(z + t * v), lab)))

    v = rng.standard_normal(z.shape)
    h = 1e-6
    np.testing.assert_allclose((f(h, v) - f(-h, v)) / (2 * h), np.sum(grad * v), rtol=1e-6)
    np.testing.assert_allclose(grad.sum(axis=0), 0.0, atol=1e-15)


def test_loss_is_finite_for_huge_logits(backend):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [0.0, 0.0, -1e4]])
    labels = np.array([0, 0, 2])
    loss_fn = SoftmaxCrossEntropy(0.1, backend=backend)
    loss = float(backend.to_numpy(loss_fn.forward(backend.asarray(z), backend.asarray(labels))))
    grad = backend.to_numpy(loss_fn.backward())
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss, naive_cross_entropy(z, labels, 0.1), rtol=1e-12)


@pytest.mark.parametrize("smoothing", [-0.1, 1.5, "0.1"])
def test_loss_rejects_bad_smoothing(smoothing):
    with pytest.raises(ConfigError, match="label smoothing"):
        SoftmaxCrossEntropy(smoothing, backend="numpy")


# ---------------------------------------------------------------------- init
def test_initialisers_follow_their_formulas():
    rng = np.random.default_rng(17)
    shape, fan_in, fan_out = (200, 50, 5, 5), 1250, 5000
    he = he_normal(shape, fan_in, fan_out, rng)
    assert he.dtype == np.float64 and he.shape == shape
    np.testing.assert_allclose(he.std(), np.sqrt(2 / fan_in), rtol=0.01)
    lecun = lecun_normal(shape, fan_in, fan_out, rng)
    np.testing.assert_allclose(lecun.std(), 1 / np.sqrt(fan_in), rtol=0.01)
    glorot = glorot_uniform(shape, fan_in, fan_out, rng)
    limit = np.sqrt(6 / (fan_in + fan_out))
    assert np.abs(glorot).max() <= limit and np.abs(glorot).max() > 0.99 * limit
    np.testing.assert_allclose(glorot.std(), limit / np.sqrt(3), rtol=0.01)


def test_layers_reject_bad_hyper_parameters():
    with pytest.raises(ConfigError, match="unknown initialiser 'xavier'.*he, glorot, lecun"):
        Conv2d(1, 6, 5, init="xavier")
    with pytest.raises(ConfigError, match="kernel_size must be an integer >= 1"):
        Conv2d(1, 6, 0)
    with pytest.raises(ConfigError, match="padding must be an integer >= 0"):
        Conv2d(1, 6, 3, padding=-1)
    with pytest.raises(ConfigError, match="expects 3 input channels"):
        Conv2d(3, 6, 3).output_shape((1, 32, 32))
    with pytest.raises(ConfigError, match="not a Layer"):
        Sequential(Conv2d(1, 6, 5), "relu")


def test_parameters_are_created_on_the_device_in_the_dtype(backend):
    layer = Linear(3, 2).bind(backend, "float32", np.random.default_rng(0), None)
    assert layer.weight.data.dtype == np.float32 and layer.weight.shape == (2, 3)
    assert isinstance(layer.weight.data, backend.xp.ndarray)
    np.testing.assert_array_equal(backend.to_numpy(layer.bias.data), 0.0)
