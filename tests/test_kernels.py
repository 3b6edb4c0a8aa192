"""Every backend kernel against the naive loops of tests/naive.py, against the reference
backend on random shapes, and live against PyTorch.

One test body per kernel; the ``backend`` fixture runs it on every usable backend and on
the reference (fastlenet/backends/reference.py). Forward and backward are checked in float64 (tight tolerance: only summation
order differs) and in float32 (float32 tolerance, against the float64 reference of the
same inputs). Max-pool is also fed deliberate ties: the gradient must go to the first
maximum in row-major window order, as in PyTorch.

The random-shape tests hold every backend to the reference: numpy, numba, cupy with its
CUDA kernels run on the CPU (tests/host_cuda.py), and cupy on a CUDA device (marker
``gpu``).
"""

import numpy as np
import pytest

import naive as ref
from helpers import load_backend
from fastlenet import backends
from fastlenet.backends.base import adam_factors
from fastlenet.backends.reference import ReferenceBackend

DTYPES = [np.float64, np.float32]
REFERENCE = ReferenceBackend()


@pytest.fixture(params=[*backends.usable(), "reference"])
def backend(request):
    """Every usable backend, and the reference that the random-shape tests hold them to."""
    return REFERENCE if request.param == "reference" else backends.get_backend(request.param)


def _tol(dtype):
    return dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)


def _check(backend, actual, expected, dtype):
    actual = backend.to_numpy(actual)
    assert actual.dtype == dtype
    assert actual.shape == np.shape(expected)
    np.testing.assert_allclose(actual, expected, **_tol(dtype))


def _normal(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _ties(rng, shape, dtype):
    """Small integers: many windows hold several equal maxima, some only negatives or zeros."""
    return rng.integers(-2, 3, size=shape).astype(dtype)


# ---------------------------------------------------------------------- layout
@pytest.mark.parametrize("shape", [(1, 1, 4, 4), (13, 2, 3, 5), (8, 7), (130, 3), (37, 2, 4, 5)])
def test_batch_last_round_trip(backend, shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    xb = backend.to_batch_last(backend.asarray(x))
    _check(backend, xb, np.moveaxis(x, 0, -1), np.float32)
    assert backend.to_numpy(xb).flags.c_contiguous
    _check(backend, backend.from_batch_last(xb), x, np.float32)


@pytest.mark.parametrize("shape", [(9, 1, 4, 4), (40, 3, 2, 5), (11, 7)])
def test_batch_last_gathers_by_index(backend, shape):
    """to_batch_last(x, index) is to_batch_last(x[index]): any order, repeats, negative
    indices counted from the end, an empty batch; an index past the end is an error on the
    host backends (on cupy it is not checked)."""
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    for index in ([3, 0, 0, 8], [-1, 2, -9], list(range(8, -1, -1)), []):
        idx = backend.asarray(np.array(index, dtype=np.int64))
        xb = backend.to_batch_last(backend.asarray(x), idx)
        _check(backend, xb, np.moveaxis(x[index], 0, -1), np.float32)
    if backend.name != "cupy":  # CuPy wraps it around; base.to_batch_last says so
        with pytest.raises(IndexError):
            backend.to_batch_last(backend.asarray(x), backend.asarray(np.array([0, len(x)])))


# ----------------------------------------------------------------- convolution
# (C, H, W, N, K, KH, KW, stride, pad): odd batches, non-square inputs and kernels,
# strides 1-3, paddings 0-2, kernels 1-5, one LeNet-like layer, one whose output is
# narrower than its kernel (no input column is reached by every kernel column), and the
# NumPy backend's weight gradient with one output row per product (K > 24) and with
# groups of rows whose last group is shorter (stride 1 and 2), with an input row no
# window reaches, and with a stride larger than the kernel; the last two sum 144 and 72
# terms per output, enough for numba's register tiles (7 and 6 output channels: blocks
# of 4, 2 and 1), with rows of 90 and 198 values (whole tiles, then vectors, then single
# values).
CONV_CASES = [
    (1, 7, 7, 1, 2, 1, 1, 1, 0),
    (3, 6, 3, 5, 2, 3, 5, 1, 1),
    (3, 8, 6, 3, 4, 3, 3, 1, 1),
    (2, 9, 7, 7, 3, 3, 3, 2, 1),
    (2, 9, 10, 3, 2, 5, 5, 3, 2),
    (3, 6, 8, 1, 5, 5, 3, 2, 2),
    (2, 8, 7, 7, 3, 3, 5, 2, 0),
    (4, 5, 5, 3, 2, 3, 3, 3, 1),
    (1, 12, 12, 3, 6, 5, 5, 1, 0),
    (2, 7, 6, 3, 25, 3, 3, 2, 1),
    (2, 11, 9, 3, 6, 5, 3, 1, 0),
    (1, 15, 6, 2, 8, 3, 3, 2, 0),
    (1, 16, 6, 2, 8, 3, 3, 2, 0),
    (1, 13, 5, 2, 6, 1, 1, 3, 0),
    (16, 7, 9, 10, 7, 3, 3, 1, 1),
    (8, 6, 6, 33, 6, 3, 3, 1, 0),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_reference(backend, case, dtype):
    c, h, wd, n, k, kh, kw, stride, pad = case
    rng = np.random.default_rng(sum(case))
    x = _normal(rng, (c, h, wd, n), dtype)
    w, b = _normal(rng, (k, c, kh, kw), dtype), _normal(rng, k, dtype)
    y, ctx = backend.conv2d_forward(backend.asarray(x), backend.asarray(w), backend.asarray(b),
                                    stride, pad)
    x64, w64, b64 = (a.astype(np.float64) for a in (x, w, b))
    y_ref = ref.conv2d_forward(x64, w64, b64, stride, pad)
    _check(backend, y, y_ref, dtype)

    dy = _normal(rng, y_ref.shape, dtype)
    dx, dw, db = backend.conv2d_backward(backend.asarray(dy), ctx)
    dx_ref, dw_ref, db_ref = ref.conv2d_backward(dy.astype(np.float64), x64, w64, stride, pad)
    _check(backend, dx, dx_ref, dtype)
    _check(backend, dw, dw_ref, dtype)
    _check(backend, db, db_ref, dtype)


def test_conv2d_without_bias_and_without_dx(backend):
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 7, 6, 3)), rng.standard_normal((3, 2, 3, 3))
    y, ctx = backend.conv2d_forward(backend.asarray(x), backend.asarray(w), None, 2, 1)
    _check(backend, y, ref.conv2d_forward(x, w, None, 2, 1), np.float64)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = backend.conv2d_backward(backend.asarray(dy), ctx, need_dx=False)
    assert dx is None and db is None
    _check(backend, dw, ref.conv2d_backward(dy, x, w, 2, 1)[1], np.float64)


def test_conv2d_contexts_stay_valid_across_calls(backend):
    """Two layers of the same shapes, forward both then backward in reverse order (as a
    model does): each output and each backward must be what it is when run alone."""
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((2, 8, 8, 3)) for _ in range(2)]
    ws = [rng.standard_normal((2, 2, 3, 3)) for _ in range(2)]
    bs = [rng.standard_normal(2) for _ in range(2)]
    dys = [rng.standard_normal((2, 8, 8, 3)) for _ in range(2)]
    outs = [backend.conv2d_forward(*(backend.asarray(a) for a in (x, w, b)), 1, 1)
            for x, w, b in zip(xs, ws, bs)]
    grads = [backend.conv2d_backward(backend.asarray(dy), ctx) for dy, (_, ctx) in
             zip(dys[::-1], outs[::-1])][::-1]
    for x, w, b, dy, (y, _), got in zip(xs, ws, bs, dys, outs, grads):
        _check(backend, y, ref.conv2d_forward(x, w, b, 1, 1), np.float64)
        for actual, expected in zip(got, ref.conv2d_backward(dy, x, w, 1, 1)):
            _check(backend, actual, expected, np.float64)


def test_conv2d_on_strided_views(backend):
    """x and dy as views with negative, gapped and transposed strides, padding 0 (the
    NumPy backend then reads x in place) and 1: the same values as contiguous copies."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal((9, 3, 10, 2 * 8))  # (W, C, H, 2N)
    x = base.transpose(1, 2, 0, 3)[:, ::-1, :, ::2]  # (C, H, W, N) = (3, 10, 9, 8)
    w, b = rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    for stride, pad in ((1, 0), (2, 0), (2, 1)):
        x_c = np.ascontiguousarray(x)
        y, ctx = backend.conv2d_forward(backend.asarray(x), backend.asarray(w),
                                        backend.asarray(b), stride, pad)
        _check(backend, y, ref.conv2d_forward(x_c, w, b, stride, pad), np.float64)
        dy = rng.standard_normal(y.shape[::-1]).T  # (K, OH, OW, N), Fortran order
        for actual, expected in zip(backend.conv2d_backward(backend.asarray(dy), ctx),
                                    ref.conv2d_backward(np.ascontiguousarray(dy), x_c, w,
                                                        stride, pad)):
            _check(backend, actual, expected, np.float64)


@pytest.mark.parametrize("C, K, N", [(0, 3, 2), (2, 0, 2), (2, 3, 0)])
def test_conv2d_with_nothing_to_compute(backend, C, K, N):
    """No input channels, no output channels or no images: empty arrays of the right
    shapes, and zeros where a sum has no terms (y is the bias, dw and db are zero)."""
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((C, 6, 5, N)), rng.standard_normal((K, C, 3, 3)), \
        rng.standard_normal(K)
    y, ctx = backend.conv2d_forward(backend.asarray(x), backend.asarray(w),
                                    backend.asarray(b), 1, 1)
    _check(backend, y, ref.conv2d_forward(x, w, b, 1, 1), np.float64)
    dy = rng.standard_normal(tuple(y.shape))
    for actual, expected in zip(backend.conv2d_backward(backend.asarray(dy), ctx),
                                ref.conv2d_backward(dy, x, w, 1, 1)):
        _check(backend, actual, expected, np.float64)


def test_conv2d_rejects_bad_shapes(backend):
    x = backend.asarray(np.zeros((3, 6, 6, 2)))
    with pytest.raises(ValueError, match="channels"):
        backend.conv2d_forward(x, backend.asarray(np.zeros((4, 2, 3, 3))), None, 1, 0)
    with pytest.raises(ValueError, match="does not fit"):
        backend.conv2d_forward(x, backend.asarray(np.zeros((4, 3, 9, 9))), None, 1, 1)
    for kernel, name in (((0, 3), "kernel height"), ((3, 0), "kernel width")):
        with pytest.raises(ValueError, match=f"{name} must be an integer >= 1"):
            backend.conv2d_forward(x, backend.asarray(np.zeros((4, 3, *kernel))), None, 1, 0)


# --------------------------------------------------------------------- pooling
# (C, H, W, N, size, stride): non-overlapping, overlapping (3/2, 2/1), gaps between
# windows (2/3), leftover rows and columns, a window as large as the input, 1x1 windows.
POOL_CASES = [
    (2, 6, 6, 3, 2, 2),
    (3, 7, 9, 7, 3, 2),
    (1, 5, 8, 1, 2, 1),
    (2, 9, 7, 3, 3, 3),
    (1, 8, 7, 3, 2, 3),
    (1, 4, 4, 1, 4, 4),
    (2, 7, 5, 3, 2, 2),
    (2, 3, 4, 3, 1, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make", [_normal, _ties], ids=["distinct", "ties"])
@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool2d_matches_reference(backend, case, make, dtype):
    c, h, wd, n, size, stride = case
    rng = np.random.default_rng(sum(case))
    x = make(rng, (c, h, wd, n), dtype)
    y, ctx = backend.maxpool2d_forward(backend.asarray(x), size, stride)
    y_ref, _ = ref.maxpool2d_forward(x, size, stride)
    _check(backend, y, y_ref, dtype)
    dy = _normal(rng, y_ref.shape, dtype)
    dx = backend.maxpool2d_backward(backend.asarray(dy), ctx)
    _check(backend, dx, ref.maxpool2d_backward(dy, x, size, stride), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make", [_normal, _ties], ids=["distinct", "ties"])
@pytest.mark.parametrize("case", POOL_CASES)
def test_relu_maxpool2d_is_relu_then_maxpool(backend, case, make, dtype):
    c, h, wd, n, size, stride = case
    rng = np.random.default_rng(sum(case) + 1)
    x = make(rng, (c, h, wd, n), dtype)
    y, ctx = backend.relu_maxpool2d_forward(backend.asarray(x), size, stride)
    _check(backend, y, ref.relu_maxpool2d_forward(x, size, stride), dtype)
    dy = _normal(rng, y.shape, dtype)
    dx = backend.relu_maxpool2d_backward(backend.asarray(dy), ctx)
    _check(backend, dx, ref.relu_maxpool2d_backward(dy, x, size, stride), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES)
def test_avgpool2d_matches_reference(backend, case, dtype):
    c, h, wd, n, size, stride = case
    rng = np.random.default_rng(sum(case) + 2)
    x = _normal(rng, (c, h, wd, n), dtype)
    y, ctx = backend.avgpool2d_forward(backend.asarray(x), size, stride)
    y_ref = ref.avgpool2d_forward(x.astype(np.float64), size, stride)
    _check(backend, y, y_ref, dtype)
    dy = _normal(rng, y_ref.shape, dtype)
    dx = backend.avgpool2d_backward(backend.asarray(dy), ctx)
    dx_ref = ref.avgpool2d_backward(dy.astype(np.float64), x.shape, size, stride)
    _check(backend, dx, dx_ref, dtype)


@pytest.mark.parametrize("forward", ["maxpool2d_forward", "avgpool2d_forward",
                                     "relu_maxpool2d_forward"])
def test_pool_rejects_window_larger_than_input(backend, forward):
    x = backend.asarray(np.zeros((1, 3, 5, 2)))
    with pytest.raises(ValueError, match="does not fit"):
        getattr(backend, forward)(x, 4, 1)


# --------------------------------------------------------------- dense and loss
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_reference(backend, with_bias, dtype):
    rng = np.random.default_rng(3)
    x, w = _normal(rng, (7, 5), dtype), _normal(rng, (4, 7), dtype)
    b = _normal(rng, 4, dtype) if with_bias else None
    y, ctx = backend.linear_forward(backend.asarray(x), backend.asarray(w),
                                    None if b is None else backend.asarray(b))
    _check(backend, y, ref.linear_forward(x, w, b), dtype)
    dy = _normal(rng, (4, 5), dtype)
    dx, dw, db = backend.linear_backward(backend.asarray(dy), ctx)
    dx_ref, dw_ref, db_ref = ref.linear_backward(dy, x, w)
    _check(backend, dx, dx_ref, dtype)
    _check(backend, dw, dw_ref, dtype)
    if with_bias:
        _check(backend, db, db_ref, dtype)
    else:
        assert db is None
    assert backend.linear_backward(backend.asarray(dy), ctx, need_dx=False)[0] is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy_matches_reference(backend, smoothing, dtype):
    rng = np.random.default_rng(4)
    logits = (5 * rng.standard_normal((10, 7))).astype(dtype)
    labels = rng.integers(0, 10, size=7)
    loss, grad = backend.softmax_cross_entropy(backend.asarray(logits), backend.asarray(labels),
                                               smoothing)
    loss_ref, grad_ref = ref.softmax_cross_entropy(logits, labels, smoothing)
    np.testing.assert_allclose(float(backend.to_numpy(loss)), loss_ref, **_tol(dtype))
    _check(backend, grad, grad_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_update_matches_the_reference_definition(backend, weight_decay, dtype):
    """A backend's own Adam update must compute the reference's maths."""
    rng = np.random.default_rng(5)
    shape = (6, 1, 5, 5)
    p, m = _normal(rng, shape, dtype), 0.1 * _normal(rng, shape, dtype)
    v = np.abs(0.01 * _normal(rng, shape, dtype))
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=weight_decay)
    for step in (1, 2, 7):
        g = _normal(rng, shape, dtype)
        want = [backend.asarray(a.copy()) for a in (p, m, v)]
        factors = backend.asarray(adam_factors(hyper["lr"], 0.9, 0.999, weight_decay, step),
                                  dtype=dtype)
        ReferenceBackend.adam_update_device(backend, want[0], backend.asarray(g), want[1],
                                            want[2], factors, beta1=0.9, beta2=0.999, eps=1e-8,
                                            weight_decay=weight_decay)
        got = [backend.asarray(a.copy()) for a in (p, m, v)]
        backend.adam_update(got[0], backend.asarray(g), got[1], got[2], step=step, **hyper)
        for actual, expected in zip(got, want):
            # m and v cancel (b1 m vs (1 - b1) g): float32 needs an absolute floor, as a
            # fused update rounds once where the generic one rounds after every operation
            np.testing.assert_allclose(backend.to_numpy(actual), backend.to_numpy(expected),
                                       **(dict(rtol=1e-6, atol=1e-7) if dtype == np.float32
                                          else dict(rtol=1e-14, atol=0)))
        p, m, v = (backend.to_numpy(a) for a in got)


# ------------------------------------------------------------ live against PyTorch
def _torch():
    return pytest.importorskip("torch")


@pytest.mark.torch
@pytest.mark.parametrize("stride, pad", [(1, 0), (1, 2), (2, 1), (3, 2)])
def test_conv2d_matches_torch(backend, stride, pad):
    torch = _torch()
    rng = np.random.default_rng(stride * 10 + pad)
    x, w = rng.standard_normal((3, 11, 9, 5)), rng.standard_normal((4, 3, 5, 5))
    b = rng.standard_normal(4)
    xt = torch.tensor(np.moveaxis(x, -1, 0), requires_grad=True)
    wt, bt = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=pad)
    dy = rng.standard_normal(yt.shape)  # (N, K, OH, OW)
    yt.backward(torch.tensor(dy))

    y, ctx = backend.conv2d_forward(backend.asarray(x), backend.asarray(w), backend.asarray(b),
                                    stride, pad)
    _check(backend, y, np.moveaxis(yt.detach().numpy(), 0, -1), np.float64)
    dx, dw, db = backend.conv2d_backward(backend.asarray(np.moveaxis(dy, 0, -1)), ctx)
    _check(backend, dx, np.moveaxis(xt.grad.numpy(), 0, -1), np.float64)
    _check(backend, dw, wt.grad.numpy(), np.float64)
    _check(backend, db, bt.grad.numpy(), np.float64)


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["max", "avg", "relu_max"])
@pytest.mark.parametrize("size, stride", [(2, 2), (3, 2), (2, 1), (2, 3)])
def test_pool_matches_torch(backend, kind, size, stride):
    torch = _torch()
    rng = np.random.default_rng(size * 10 + stride)
    # integers give ties (and, after the ReLU, windows of zeros) for the max-pools
    x = rng.integers(-2, 3, size=(3, 9, 8, 5)).astype(np.float64)
    xt = torch.tensor(np.moveaxis(x, -1, 0), requires_grad=True)
    functional = torch.nn.functional
    if kind == "avg":
        yt = functional.avg_pool2d(xt, size, stride)
    elif kind == "max":
        yt = functional.max_pool2d(xt, size, stride)
    else:
        yt = functional.max_pool2d(functional.relu(xt), size, stride)
    dy = rng.standard_normal(yt.shape)
    yt.backward(torch.tensor(dy))

    forward = getattr(backend, f"{kind}pool2d_forward")
    backward = getattr(backend, f"{kind}pool2d_backward")
    y, ctx = forward(backend.asarray(x), size, stride)
    _check(backend, y, np.moveaxis(yt.detach().numpy(), 0, -1), np.float64)
    dx = backward(backend.asarray(np.moveaxis(dy, 0, -1)), ctx)
    _check(backend, dx, np.moveaxis(xt.grad.numpy(), 0, -1), np.float64)


# ------------------------------------------------ every backend against the reference
@pytest.fixture(scope="module", params=["numpy", "numba", "cupy-on-cpu",
                                        pytest.param("cupy", marks=pytest.mark.gpu)])
def candidate(request):
    """A backend held to the reference; skipped, saying why, where it cannot run."""
    return load_backend(request.param)


def _both(candidate, call):
    """``call(backend)`` on the candidate and on the reference, as host arrays (None stays
    None): ``[(got, want), ...]``."""
    got, want = call(candidate), call(REFERENCE)
    host = lambda b, a: None if a is None else b.to_numpy(a)
    return [(host(candidate, g), host(REFERENCE, w)) for g, w in zip(got, want)]


def _agree(pairs, dtype):
    for got, want in pairs:
        assert (got is None) == (want is None)
        if want is not None:
            assert got.dtype == dtype and got.shape == want.shape
            np.testing.assert_allclose(got, want, **_tol(dtype))


def _random_conv_case(rng):
    """Random channels, kernels 1-6 (not square), strides 1-3, paddings 0-2, odd batches."""
    C, K = (int(v) for v in rng.integers(1, 6, size=2))
    KH, KW = (int(v) for v in rng.integers(1, 7, size=2))
    stride, pad = int(rng.integers(1, 4)), int(rng.integers(0, 3))
    H = int(rng.integers(max(KH - 2 * pad, 1), 14))
    W = int(rng.integers(max(KW - 2 * pad, 1), 14))
    N = int(rng.choice([1, 3, 7, 13, 33, 130]))
    return (C, H, W, N), (K, C, KH, KW), stride, pad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(12))
def test_conv2d_on_random_shapes_matches_the_reference(candidate, seed, dtype):
    rng = np.random.default_rng(seed)
    x_shape, w_shape, stride, pad = _random_conv_case(rng)
    x, w = _normal(rng, x_shape, dtype), _normal(rng, w_shape, dtype)
    b = _normal(rng, w_shape[0], dtype) if seed % 3 else None
    need_dx = seed % 4 != 1

    def run(be):
        y, ctx = be.conv2d_forward(be.asarray(x), be.asarray(w),
                                   None if b is None else be.asarray(b), stride, pad)
        dy = _normal(np.random.default_rng(seed + 100), y.shape, dtype)
        return (y, *be.conv2d_backward(be.asarray(dy), ctx, need_dx=need_dx))

    _agree(_both(candidate, run), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(12))
def test_conv_relu_maxpool_on_random_shapes_matches_the_reference(candidate, seed, dtype):
    """The fused conv + ReLU + max-pool against the reference's chain of the three:
    random convolutions (strided ones take the chained path), windows of 1-3 with
    leftover rows and columns, gaps and overlaps, odd channel counts; the input is small
    integers, so the convolution's outputs tie and the ReLU zeroes whole windows."""
    rng = np.random.default_rng(300 + seed)
    x_shape, w_shape, stride, pad = _random_conv_case(rng)
    if seed % 2:
        stride = 1  # the fused path, in half the cases
    OH, OW = ((n + 2 * pad - k) // stride + 1 for n, k in zip(x_shape[1:3], w_shape[2:]))
    size = int(rng.integers(1, min(OH, OW, 3) + 1))
    if seed % 4 == 1 and min(OH, OW) >= 2:
        size = 2  # LeNet-5's windows, which numba pools in registers
    pool_stride = size if seed % 4 < 3 else int(rng.integers(1, 4))
    x, w = _ties(rng, x_shape, dtype), _ties(rng, w_shape, dtype)
    b = _ties(rng, w_shape[0], dtype) if seed % 3 else None
    need_dx = seed % 5 != 1

    def run(be):
        y, ctx = be.conv2d_relu_maxpool2d_forward(
            be.asarray(x), be.asarray(w), None if b is None else be.asarray(b), stride, pad,
            size, pool_stride)
        dy = _normal(np.random.default_rng(seed + 200), y.shape, dtype)
        return (y, *be.conv2d_relu_maxpool2d_backward(be.asarray(dy), ctx, need_dx=need_dx))

    _agree(_both(candidate, run), dtype)


def test_conv_relu_maxpool_keeps_nans(candidate):
    """A NaN weight makes NaN outputs on every backend, never zeros that train on, and
    NaN in every gradient where the reference has one (where exactly differs: 0 * NaN is
    NaN, and the backends multiply different zeros)."""
    rng = np.random.default_rng(5)
    x = _normal(rng, (2, 8, 8, 5), np.float32)
    w = _normal(rng, (3, 2, 3, 3), np.float32)
    w[1, 0, 1, 1] = np.nan
    dy = _normal(rng, (3, 3, 3, 5), np.float32)

    def run(be):
        y, ctx = be.conv2d_relu_maxpool2d_forward(be.asarray(x), be.asarray(w), None, 1, 0, 2, 2)
        return (y, *be.conv2d_relu_maxpool2d_backward(be.asarray(dy), ctx))

    pairs = _both(candidate, run)
    (y, want), *grads = pairs
    assert np.isnan(want[1]).all() and np.isnan(y[1]).all()
    np.testing.assert_allclose(y, want, **_tol(np.float32))  # NaNs where the reference has
    for got, want in grads:  # dx and dw (no bias here)
        if want is not None:
            assert np.isnan(got).any() == np.isnan(want).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["max", "relu_max", "avg"])
@pytest.mark.parametrize("seed", range(10))
def test_pooling_on_random_shapes_matches_the_reference(candidate, seed, kind, dtype):
    rng = np.random.default_rng(100 + seed)
    size, stride = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    C, N = int(rng.integers(1, 5)), int(rng.choice([1, 3, 7, 33, 130]))
    H, W = (int(v) for v in rng.integers(size, 12, size=2))
    x = _ties(rng, (C, H, W, N), dtype)  # and windows of zeros and negatives for the ReLU
    dy_seed = int(rng.integers(1 << 30))

    def run(be):
        y, ctx = getattr(be, f"{kind}pool2d_forward")(be.asarray(x), size, stride)
        dy = _normal(np.random.default_rng(dy_seed), y.shape, dtype)
        return y, getattr(be, f"{kind}pool2d_backward")(be.asarray(dy), ctx)

    _agree(_both(candidate, run), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(400, 130, 120), (7, 1, 3), (84, 33, 10), (5, 2, 1)])
def test_linear_matches_the_reference(candidate, shape, dtype):
    IN, N, OUT = shape
    rng = np.random.default_rng(IN)
    x, w, b = _normal(rng, (IN, N), dtype), _normal(rng, (OUT, IN), dtype), _normal(rng, OUT, dtype)
    dy = _normal(rng, (OUT, N), dtype)

    def run(be):
        y, ctx = be.linear_forward(be.asarray(x), be.asarray(w), be.asarray(b))
        return (y, *be.linear_backward(be.asarray(dy), ctx))

    _agree(_both(candidate, run), dtype)


# (C, M, mean, spread): compact's first channel count, a row as long as compact's first
# batch norm's at batch 128 (float32 sums must not drift), odd row lengths, a row of 2 (the
# least training takes), one channel, means far from 0 against the spread (one-pass sums
# must not cancel; the farthest in float64 only, as float32 inputs hold too few digits of
# their spread), and (F, N) batch-norm shapes: batch 1 in eval only
BN_CASES = [(16, 28 * 28 * 3, 0.0, 1.0), (2, 28 * 28 * 128, 0.5, 1.0), (3, 37, 1.0, 2.0),
            (5, 2, 0.0, 1.0),
            (1, 129, -3.0, 0.5), (7, 33, 30.0, 1.0), (6, 21, 3000.0, 1.0),
            (96, 13, 0.0, 3.0), (4, 1, 0.0, 1.0)]


def _batchnorm_inputs(case, dtype, seed=0):
    C, M, mean, spread = case
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((C, M)) * spread + mean).astype(dtype)
    gamma = rng.uniform(-1.5, 1.5, C).astype(dtype)  # negative scales too
    beta = rng.standard_normal(C).astype(dtype)
    running = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2.0, C).astype(dtype)
    dy = rng.standard_normal((C, M)).astype(dtype)
    return x, gamma, beta, running, dy


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", BN_CASES, ids=str)
def test_batchnorm_matches_the_reference(candidate, case, training, dtype):
    """Output, every gradient and the updated running estimates, in train and eval mode;
    with need_dx false only the parameter gradients."""
    if training and case[1] < 2:
        pytest.skip("training needs two values per channel")
    if dtype == np.float32 and case[2] > 100 * case[3]:
        pytest.skip("float32 inputs hold too few digits of this spread")
    x, gamma, beta, (rm, rv), dy = _batchnorm_inputs(case, dtype)

    def run(be):
        running_mean, running_var = be.asarray(rm.copy()), be.asarray(rv.copy())
        y, ctx = be.batchnorm_forward(be.asarray(x), be.asarray(gamma), be.asarray(beta),
                                      running_mean, running_var, training=training,
                                      momentum=0.3, eps=1e-5)
        dx, dgamma, dbeta = be.batchnorm_backward(be.asarray(dy), ctx)
        no_dx = be.batchnorm_backward(be.asarray(dy), ctx, need_dx=False)
        assert no_dx[0] is None
        return y, dx, dgamma, dbeta, *no_dx[1:], running_mean, running_var

    _agree(_both(candidate, run), dtype)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", [(3, 37, 1.0, 2.0), (2, 5, 40.0, 0.3), (4, 1, 0.0, 1.0)],
                         ids=str)
def test_batchnorm_gradients_match_finite_differences(candidate, case, training):
    """Every gradient of each backend's kernels against central differences in float64,
    along a random direction of (x, gamma, beta) and on single coordinates."""
    if training and case[1] < 2:
        pytest.skip("training needs two values per channel")
    x, gamma, beta, (rm, rv), dy = _batchnorm_inputs(case, np.float64, seed=1)
    be = candidate

    def objective(x_, gamma_, beta_):
        y, _ = be.batchnorm_forward(be.asarray(x_), be.asarray(gamma_), be.asarray(beta_),
                                    be.asarray(rm.copy()), be.asarray(rv.copy()),
                                    training=training, momentum=0.1, eps=1e-5)
        return float(np.sum(dy * be.to_numpy(y)))

    _, ctx = be.batchnorm_forward(be.asarray(x), be.asarray(gamma), be.asarray(beta),
                                  be.asarray(rm.copy()), be.asarray(rv.copy()),
                                  training=training, momentum=0.1, eps=1e-5)
    grads = [be.to_numpy(g) for g in be.batchnorm_backward(be.asarray(dy), ctx)]
    rng = np.random.default_rng(2)
    h = 1e-6
    directions = [[rng.standard_normal(a.shape) for a in (x, gamma, beta)]]
    for k, a in enumerate((x, gamma, beta)):  # one coordinate of each
        v = [np.zeros(b.shape) for b in (x, gamma, beta)]
        v[k][np.unravel_index(int(rng.integers(a.size)), a.shape)] = 1.0
        directions.append(v)
    for v in directions:
        plus = objective(*(a + h * d for a, d in zip((x, gamma, beta), v)))
        minus = objective(*(a - h * d for a, d in zip((x, gamma, beta), v)))
        analytic = sum(np.sum(g * d) for g, d in zip(grads, v))
        np.testing.assert_allclose((plus - minus) / (2 * h), analytic, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", [((16, 28, 28, 7), 2, 2), ((3, 6, 4, 1), 2, 2),
                                  ((2, 9, 6, 5), 3, 3), ((3, 7, 9, 4), 2, 2),
                                  ((2, 6, 6, 3), 3, 1), ((5, 2, 2, 33), 2, 2)], ids=str)
def test_batchnorm_relu_maxpool_matches_the_reference(candidate, case, training, dtype):
    """The fused batch norm + ReLU + max-pool against the reference's chain of the kernels:
    compact's first block at an odd batch, batch 1, 3x3 windows, leftover rows and columns,
    overlapping windows, and gammas of both signs. Inputs distinct and away from the
    batch mean, so neither a window's maximum nor the ReLU's side is a rounding matter."""
    shape, size, stride = case
    rng = np.random.default_rng(sum(shape))
    count = int(np.prod(shape))
    x = ((rng.permutation(count) - count / 2 + 0.37) * (8.0 / count)).reshape(shape).astype(dtype)
    C = shape[0]
    gamma = (rng.uniform(0.5, 1.5, C) * rng.choice([-1, 1], C)).astype(dtype)
    beta = (rng.standard_normal(C) * 0.1).astype(dtype)
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)

    def run(be):
        running_mean, running_var = be.asarray(rm.copy()), be.asarray(rv.copy())
        y, ctx = be.batchnorm_relu_maxpool2d_forward(
            be.asarray(x), be.asarray(gamma), be.asarray(beta), running_mean, running_var, size,
            stride, training=training, momentum=0.1, eps=1e-5)
        dy = _normal(np.random.default_rng(3), y.shape, dtype)
        dx, dgamma, dbeta = be.batchnorm_relu_maxpool2d_backward(be.asarray(dy), ctx)
        no_dx = be.batchnorm_relu_maxpool2d_backward(be.asarray(dy), ctx, need_dx=False)
        assert no_dx[0] is None
        return y, dx, dgamma, dbeta, *no_dx[1:], running_mean, running_var

    _agree(_both(candidate, run), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6, 28, 28, 13), (120, 1), (1, 3, 3, 1), (40001,)])
def test_tanh_matches_the_reference(candidate, shape, dtype):
    """Values over the whole curve: tiny ones, the steep middle, the saturated tails,
    infinities and NaN; and the gradient."""
    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    flat = x.reshape(-1)
    flat[:8] = [0.0, -1e-30, 3e-4, -5e-4, 12.0, -30.0, np.inf, -np.inf][:flat.size]
    dy = _normal(rng, shape, dtype)

    def run(be):
        y, ctx = be.tanh_forward(be.asarray(x))
        return y, be.tanh_backward(be.asarray(dy), ctx)

    _agree(_both(candidate, run), dtype)
    nan = np.full((1, 3), np.nan, dtype)
    assert np.isnan(candidate.to_numpy(candidate.tanh_forward(candidate.asarray(nan))[0])).all()


@pytest.mark.parametrize("kind", ["max", "relu_max"])
def test_pooling_keeps_nans_as_the_reference_does(candidate, kind):
    """A NaN (a diverged weight) must win its window and reach the loss, where training
    stops, on every backend: never become a 0 that trains on silently."""
    x = np.zeros((1, 4, 4, 5), dtype=np.float32)
    x[0, 1, 1, 0] = np.nan  # last in its window
    x[0, 0, 0, 1] = np.nan  # first in its window
    x[0, 2, 2, 2] = -np.nan  # a window of negatives and a NaN
    x[0, 2:4, 2:4, 2] -= 1
    x[0, :, :, 3] = np.nan  # every value
    (y, want), = _both(candidate, lambda be: (getattr(be, f"{kind}pool2d_forward")(be.asarray(x), 2, 2)[0],))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    assert np.isnan(y[0, 0, 0, :2]).all() and np.isnan(y[0, 1, 1, 2]) and np.isnan(y[..., 3]).all()
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("N", [1, 7, 130, 600])
def test_softmax_cross_entropy_matches_the_reference(candidate, N, smoothing, dtype):
    rng = np.random.default_rng(N)
    logits = (20 * rng.standard_normal((10, N))).astype(dtype)
    labels = rng.integers(0, 10, size=N)
    pairs = _both(candidate, lambda be: be.softmax_cross_entropy(be.asarray(logits),
                                                                 be.asarray(labels), smoothing))
    (loss, want_loss), grads = pairs
    assert loss.shape == () and loss.dtype == dtype
    np.testing.assert_allclose(float(loss), float(want_loss), **_tol(dtype))
    _agree([grads], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [1, 7, 130, 600])
def test_count_correct_adds_argmax_hits_as_the_reference(candidate, N, dtype):
    """The training step's count of correct predictions: argmax's choice (the first of
    ties, a NaN before any number) against the labels, added to a device counter."""
    rng = np.random.default_rng(N + 1)
    logits = rng.integers(-2, 3, size=(10, N)).astype(dtype)  # many ties
    logits[:, ::5] = rng.standard_normal((10, len(range(0, N, 5))))
    logits[rng.integers(0, 10, size=N // 7), rng.integers(0, N, size=N // 7)] = np.nan
    labels = logits.argmax(axis=0)
    labels[::3] = rng.integers(0, 10, size=len(range(0, N, 3)))
    want = 5 + 2 * int((logits.argmax(axis=0) == labels).sum())
    assert 0 < want - 5 < 2 * N or N == 1
    correct = candidate.xp.full((), 5, dtype=np.int64)
    for _ in range(2):
        candidate.count_correct(candidate.asarray(logits), candidate.asarray(labels), correct)
    assert int(candidate.to_numpy(correct)) == want


def test_count_correct_rejects_a_counter_of_another_kind(backend):
    logits, labels = backend.asarray(np.zeros((10, 4))), backend.asarray(np.zeros(4, np.int64))
    for counter in (backend.xp.zeros((), dtype=np.float64), backend.xp.zeros(1, dtype=np.int64)):
        with pytest.raises(ValueError, match="count_correct: the count must be a 0-d int64"):
            backend.count_correct(logits, labels, counter)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_update_matches_the_reference(candidate, dtype):
    """Five steps of each backend's own update from the same start and gradients. (m and v
    cancel, and numba contracts multiply-adds: float64 needs 1e-12, not bit equality.)"""
    rng = np.random.default_rng(9)
    shape = (16, 6, 5, 5)
    start = (_normal(rng, shape, dtype), np.zeros(shape, dtype), np.zeros(shape, dtype))
    grads = [_normal(rng, shape, dtype) for _ in range(5)]

    def run(be):
        p, m, v = (be.asarray(a.copy()) for a in start)
        for step, g in enumerate(grads, start=1):
            be.adam_update(p, be.asarray(g), m, v, lr=3e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                           weight_decay=0.01, step=step)
        return p, m, v

    for got, want in _both(candidate, run):
        np.testing.assert_allclose(got, want, **(dict(rtol=1e-6, atol=1e-7) if dtype == np.float32
                                                 else dict(rtol=1e-12, atol=1e-16)))


@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_compact_float32_gradients_follow_float64(name):
    """A whole compact step in float32 on real digits (rows of 10^5 values per batch-norm
    channel, blank areas making many equal values) against the reference in float64:
    every gradient within 0.5% of its largest value (summing in float32 without care
    lost 1-4% here; rounding and ReLU inputs within rounding of 0 leave about 0.05%)."""
    from fastlenet.data import load_dataset, prepare
    from fastlenet.nn import Dropout, SoftmaxCrossEntropy, build_model

    data = prepare(load_dataset("mnist"), val_size=0, train_limit=128)
    x, y = data.x_train[:128], data.y_train[:128]

    def gradients(be, dtype):
        model = build_model("compact", be, dtype=dtype, seed=0)
        for layer in model.layers:
            if isinstance(layer, Dropout):
                layer.p = 0.0
        loss = SoftmaxCrossEntropy(backend=be)
        loss.forward(model.forward(be.to_batch_last(be.asarray(x, dtype=dtype))), be.asarray(y))
        model.backward(loss.backward())
        return {k: be.to_numpy(p.grad) for k, p in model.named_parameters().items()}

    got, want = gradients(load_backend(name), "float32"), gradients(REFERENCE, "float64")
    for key, w in want.items():
        np.testing.assert_allclose(got[key], w, rtol=0, atol=5e-3 * np.abs(w).max(), err_msg=key)
