"""fastlenet.functional: every op and its backward on NCHW arrays, on every backend.

Forward and backward match the naive loops of tests/naive.py (float32, the
layouts converted by hand); every backward matches a central finite difference of
sum(g * op(inputs)) along a random direction (float64); results are views that the next
op takes without a copy; and bad input gets one line naming the expected shape.
"""

import numpy as np
import pytest

import naive
from fastlenet import functional as F
from fastlenet.errors import ArrayError


def host(backend, a):
    return None if a is None else np.asarray(backend.to_numpy(a))


def bl(a):
    """NCHW (or (N, F)) -> the batch-last layout of tests/naive.py."""
    return np.ascontiguousarray(np.moveaxis(a, 0, -1))


def nchw(a):
    return np.moveaxis(a, -1, 0)


def tie_free(rng, shape, dtype):
    """Distinct values, so max-pool has one maximum per window and ReLU no zeros."""
    n = int(np.prod(shape))
    # steps of 1/n, shifted by a quarter step so that none is 0
    return ((rng.permutation(n).reshape(shape) - n / 2 + 0.25) / n).astype(dtype)


def close(actual, expected, dtype):
    tol = 2e-5 if np.dtype(dtype) == np.float32 else 1e-10
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)


# ----------------------------------------------------------- against the naive loops
@pytest.mark.parametrize("stride,padding,bias", [(1, 0, True), (1, 2, False), (2, 1, True)])
def test_conv2d_matches_the_reference(backend, stride, padding, bias):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 9, 8)).astype(np.float32)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32) if bias else None
    y, ctx = F.conv2d(x, w, b, stride=stride, padding=padding, backend=backend.name)
    expected = nchw(naive.conv2d_forward(bl(x), w, b, stride, padding))
    assert y.shape == expected.shape
    close(host(backend, y), expected, np.float32)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = F.conv2d_backward(dy, ctx)
    rdx, rdw, rdb = naive.conv2d_backward(bl(dy), bl(x), w, stride, padding)
    close(host(backend, dx), nchw(rdx), np.float32)
    close(host(backend, dw), rdw, np.float32)
    if bias:
        close(host(backend, db), rdb, np.float32)
    else:
        assert db is None


@pytest.mark.parametrize("op,size,stride", [("max", 2, None), ("max", 3, 2), ("avg", 2, None),
                                            ("avg", 3, 1)])
def test_pooling_matches_the_reference(backend, op, size, stride):
    rng = np.random.default_rng(1)
    x = tie_free(rng, (3, 2, 8, 7), np.float32)
    forward, backward = ((F.max_pool2d, F.max_pool2d_backward) if op == "max"
                         else (F.avg_pool2d, F.avg_pool2d_backward))
    y, ctx = forward(x, size, stride=stride, backend=backend.name)
    s = size if stride is None else stride
    if op == "max":
        expected = naive.maxpool2d_forward(bl(x), size, s)[0]
    else:
        expected = naive.avgpool2d_forward(bl(x), size, s)
    close(host(backend, y), nchw(expected), np.float32)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = backward(dy, ctx)
    if op == "max":
        expected_dx = naive.maxpool2d_backward(bl(dy), bl(x), size, s)
    else:
        expected_dx = naive.avgpool2d_backward(bl(dy), bl(x).shape, size, s)
    close(host(backend, dx), nchw(expected_dx), np.float32)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_the_reference(backend, bias):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 7)).astype(np.float32)
    w = rng.standard_normal((3, 7)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32) if bias else None
    y, ctx = F.linear(x, w, b, backend=backend.name)
    close(host(backend, y), naive.linear_forward(x.T, w, b).T, np.float32)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = F.linear_backward(dy, ctx)
    rdx, rdw, rdb = naive.linear_backward(dy.T, x.T, w)
    close(host(backend, dx), rdx.T, np.float32)
    close(host(backend, dw), rdw, np.float32)
    if bias:
        close(host(backend, db), rdb, np.float32)
    else:
        assert db is None


def test_relu_values_and_gradient(backend):
    x = np.array([[-1.5, 0.0, 2.0], [3.0, -0.5, 1e-3]], dtype=np.float32)
    y, ctx = F.relu(x, backend=backend.name)
    np.testing.assert_array_equal(host(backend, y), np.maximum(x, 0))
    dx = F.relu_backward(np.ones_like(x), ctx)
    np.testing.assert_array_equal(host(backend, dx), (x > 0).astype(np.float32))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy_matches_the_reference(backend, smoothing):
    rng = np.random.default_rng(3)
    z = (5 * rng.standard_normal((6, 10))).astype(np.float32)
    labels = rng.integers(0, 10, 6)
    loss, dz = F.softmax_cross_entropy(z, labels, label_smoothing=smoothing, backend=backend.name)
    rloss, rdz = naive.softmax_cross_entropy(z.T.astype(np.float64), labels, smoothing)
    close(float(host(backend, loss)), rloss, np.float32)
    assert dz.shape == z.shape
    close(host(backend, dz), rdz.T, np.float32)


# ------------------------------------------------------------- finite differences
def directional_check(backend, forward, backward, inputs, names, *, h=1e-6, seed=0):
    """Compare backward(g) with d/dt sum(g * forward(inputs + t v)) at t = 0, per input."""
    rng = np.random.default_rng(seed)
    y, ctx = forward(*inputs)
    g = rng.standard_normal(y.shape)
    grads = backward(g, ctx)
    grads = grads if isinstance(grads, tuple) else (grads,)
    for i, name in enumerate(names):
        v = rng.standard_normal(inputs[i].shape)

        def objective(t):
            moved = list(inputs)
            moved[i] = inputs[i] + t * v
            return float((host(backend, forward(*moved)[0]) * g).sum())

        numeric = (objective(h) - objective(-h)) / (2 * h)
        analytic = float((host(backend, grads[i]) * v).sum())
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-8), name


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1)])
def test_conv2d_backward_matches_finite_differences(backend, stride, padding):
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((2, 2, 7, 6)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    directional_check(
        backend, lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding, backend=backend.name),
        F.conv2d_backward, [x, w, b], ["dx", "dw", "db"])


@pytest.mark.parametrize("op", ["max", "avg"])
def test_pooling_backward_matches_finite_differences(backend, op):
    x = tie_free(np.random.default_rng(5), (2, 3, 6, 6), np.float64)
    forward = F.max_pool2d if op == "max" else F.avg_pool2d
    backward = F.max_pool2d_backward if op == "max" else F.avg_pool2d_backward
    directional_check(backend, lambda x: forward(x, 2, backend=backend.name), backward, [x], ["dx"])


def test_linear_backward_matches_finite_differences(backend):
    rng = np.random.default_rng(6)
    x, w, b = rng.standard_normal((4, 5)), rng.standard_normal((3, 5)), rng.standard_normal(3)
    directional_check(backend, lambda x, w, b: F.linear(x, w, b, backend=backend.name),
                      F.linear_backward, [x, w, b], ["dx", "dw", "db"])


def test_relu_backward_matches_finite_differences(backend):
    x = tie_free(np.random.default_rng(7), (3, 2, 4, 4), np.float64)
    directional_check(backend, lambda x: F.relu(x, backend=backend.name), F.relu_backward, [x], ["dx"])


def test_softmax_cross_entropy_gradient_matches_finite_differences(backend):
    rng = np.random.default_rng(8)
    z, labels, v = rng.standard_normal((5, 4)), rng.integers(0, 4, 5), rng.standard_normal((5, 4))
    _, dz = F.softmax_cross_entropy(z, labels, label_smoothing=0.2, backend=backend.name)
    loss = lambda t: float(host(backend, F.softmax_cross_entropy(  # noqa: E731
        z + t * v, labels, label_smoothing=0.2, backend=backend.name)[0]))
    numeric = (loss(1e-6) - loss(-1e-6)) / 2e-6
    assert float((host(backend, dz) * v).sum()) == pytest.approx(numeric, rel=1e-6)


# ------------------------------------------------------------- layout
def test_results_are_nchw_views_that_the_next_op_takes_without_a_copy(backend):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 1, 12, 12)).astype(np.float32)
    w = rng.standard_normal((3, 1, 5, 5)).astype(np.float32)
    y, _ = F.conv2d(x, w, backend=backend.name)
    assert y.shape == (4, 3, 8, 8) and not y.flags.c_contiguous
    # the batch-last memory under the NCHW view is what the kernels take
    assert F._batch_last(backend, y).base is not None
    assert F._batch_last(backend, y).flags.c_contiguous
    assert backend.xp.shares_memory(F._batch_last(backend, y), y)
    pooled, _ = F.max_pool2d(y, 2, backend=backend.name)
    reference_pooled, _ = F.max_pool2d(backend.xp.ascontiguousarray(y), 2, backend=backend.name)
    np.testing.assert_array_equal(host(backend, pooled), host(backend, reference_pooled))


def test_float64_stays_float64(backend):
    x = np.ones((2, 1, 6, 6))
    y, ctx = F.conv2d(x, np.ones((2, 1, 3, 3)), np.zeros(2), backend=backend.name)
    assert y.dtype == np.float64
    dx, dw, db = F.conv2d_backward(backend.xp.ones(y.shape), ctx)
    assert dx.dtype == dw.dtype == db.dtype == np.float64


# ------------------------------------------------------------- errors
@pytest.mark.parametrize("call,fragments", [
    (lambda: F.conv2d(np.zeros((2, 28, 28, 1), np.float32), np.zeros((6, 1, 5, 5), np.float32)),
     ["expected (N, C=1, H, W)", "channels-last", "transpose(0, 3, 1, 2)"]),
    (lambda: F.conv2d(np.zeros((28, 28), np.float32), np.zeros((6, 1, 5, 5), np.float32)),
     ["x must have 4 axes (N, C=1, H, W)", "(28, 28)"]),
    (lambda: F.conv2d(np.zeros((2, 1, 8, 8), np.int64), np.zeros((6, 1, 5, 5), np.float32)),
     ["x must be float32 or float64", "int64"]),
    (lambda: F.conv2d(np.zeros((2, 1, 8, 8), np.float32), np.zeros((6, 1, 5, 5))),
     ["weight is float64 but x is float32"]),
    (lambda: F.conv2d(np.zeros((2, 1, 8, 8), np.float32), np.zeros((6, 1, 5, 5), np.float32),
                      np.zeros(5, np.float32)), ["bias has shape (5,), expected (6,)"]),
    (lambda: F.conv2d(np.zeros((2, 1, 4, 4), np.float32), np.zeros((6, 1, 5, 5), np.float32)),
     ["does not fit an input of 4x4"]),
    (lambda: F.max_pool2d(np.zeros((2, 8, 8), np.float32), 2), ["x must have 4 axes (N, C, H, W)"]),
    (lambda: F.linear(np.zeros((2, 16, 5, 5), np.float32), np.zeros((120, 400), np.float32)),
     ["expected (N, IN=400)", "x.reshape(len(x), -1)"]),
    (lambda: F.softmax_cross_entropy(np.zeros((3, 10), np.float32), np.array([0, 1, 10])),
     ["labels must lie in [0, 10)"]),
    (lambda: F.softmax_cross_entropy(np.zeros((3, 10), np.float32), np.zeros(4, np.int64)),
     ["labels must be integers of shape (3,)"]),
    (lambda: F.conv2d_backward(np.zeros((2, 6, 3, 3), np.float32),
                               F.conv2d(np.zeros((2, 1, 8, 8), np.float32),
                                        np.zeros((6, 1, 5, 5), np.float32), backend="numpy")[1]),
     ["gradient must have the output's shape (2, 6, 4, 4)"]),
    (lambda: F.max_pool2d_backward(np.zeros((1, 1, 1, 1), np.float32),
                                   F.relu(np.zeros((1, 1, 1, 1), np.float32), backend="numpy")[1]),
     ["ctx must be what max_pool2d() returned"]),
])
def test_bad_input_gets_one_line_naming_the_expected_shape(call, fragments):
    with pytest.raises(ArrayError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert isinstance(info.value, ValueError)
