"""The cupy backend's fused conv blocks (kernels/conv_block.cu, selected by
FASTLENET_CUDA_BLOCKS=fused) against the NumPy backend: forward and every gradient,
float32 and float64, LeNet-5's shapes and others, ties, determinism, a recorded step, the
fallback to the separate kernels, and the switch. They run on the CPU emulation of
tests/host_cuda.py (every CUDA thread on the CPU, so the shapes are small) and, with
marker ``gpu``, on a CUDA device; the PTX compile test of test_cupy.py covers the file.
"""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastlenet.backends import get_backend
from fastlenet.backends.reference import ReferenceBackend
from fastlenet.errors import ArrayError, ConfigError

from helpers import load_cuda_backend

ROOT = Path(__file__).resolve().parents[1]
SWITCH = "FASTLENET_CUDA_BLOCKS"


@pytest.fixture(scope="module", params=["on-cpu", pytest.param("device", marks=pytest.mark.gpu)])
def cuda_backend(request):
    """The cupy backend with its kernels run on the CPU (tests/host_cuda.py), and on the GPU."""
    return load_cuda_backend(request.param)


@pytest.fixture
def fused(cuda_backend, monkeypatch):
    monkeypatch.setenv(SWITCH, "fused")
    return cuda_backend


def _block_module(backend):
    """fastlenet.backends.cupy_conv_block as the backend's module imported it."""
    return type(backend).conv2d_relu_maxpool2d_forward.__globals__["cupy_conv_block"]


def _inputs(shape, dtype, seed, ties=False):
    C, H, N, K, KH, stride, pad, size, ps, bias = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((C, H, H, N))
    if ties:  # blank areas, as in MNIST: windows of equal conv outputs (the bias)
        x[:, : H // 2] = 0.0
    w = rng.standard_normal((K, C, KH, KH)) / np.sqrt(C * KH * KH)
    b = (np.abs(rng.standard_normal(K)) + 0.1 if ties else rng.standard_normal(K)) if bias else None
    return [None if a is None else a.astype(dtype) for a in (x, w, b)]


def _block(be, x, w, b, dy, shape, need_dx=True):
    """y, dx, dw, db of the conv block on ``be`` (dy None: forward only)."""
    _, _, _, _, _, stride, pad, size, ps, _ = shape
    y, ctx = be.conv2d_relu_maxpool2d_forward(be.asarray(x), be.asarray(w),
                                              None if b is None else be.asarray(b),
                                              stride, pad, size, ps)
    if dy is None:
        return y, ctx
    return (y, *be.conv2d_relu_maxpool2d_backward(be.asarray(dy), ctx, need_dx=need_dx)), ctx


def _tolerance(dtype):
    return dict(rtol=1e-10, atol=1e-11) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)


def _compare(be, got, want, dtype, names=("y", "dx", "dw", "db")):
    for name, g, r in zip(names, got, want, strict=True):
        if r is None:
            assert g is None, name
            continue
        g = be.to_numpy(g)
        assert g.shape == r.shape and g.dtype == r.dtype, name
        np.testing.assert_allclose(g, r, err_msg=name, **_tolerance(dtype))



def _pooled(shape) -> int:
    """The pooled output's height (= width) of a SHAPES-style square case."""
    C, H, N, K, KH, stride, pad, size, ps, _ = shape
    return ((H + 2 * pad - KH) // stride + 1 - size) // ps + 1


def _fused_matches_numpy(fused, module, shape, seed):
    """The fused kernels ran (a FusedContext) and agree with the NumPy backend, float32."""
    x, w, b = _inputs(shape, np.float32, seed=seed)
    ref = get_backend("numpy")
    y, _ = _block(ref, x, w, b, None, shape)
    dy = np.random.default_rng(seed).standard_normal(y.shape).astype(np.float32)
    want, _ = _block(ref, x, w, b, dy, shape)
    got, ctx = _block(fused, x, w, b, dy, shape)
    assert isinstance(ctx, module.FusedContext)
    _compare(fused, got, want, np.float32)

SHAPES = {
    # C, H, N, K, KH, stride, pad, pool size, pool stride, bias
    "lenet-conv1": (1, 32, 3, 6, 5, 1, 0, 2, 2, True),
    "lenet-conv2-batch1": (6, 14, 1, 16, 5, 1, 0, 2, 2, True),
    "3x3-pad1": (3, 9, 5, 5, 3, 1, 1, 2, 2, True),
    "stride2-overlapping-pool": (2, 11, 9, 4, 3, 2, 1, 3, 2, True),  # two image chunks
    "gapped-pool-no-bias": (2, 10, 3, 3, 3, 1, 0, 2, 3, False),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", SHAPES)
def test_fused_block_and_its_gradients_match_numpy(fused, name, dtype):
    shape = SHAPES[name]
    x, w, b = _inputs(shape, dtype, seed=len(name))
    ref = get_backend("numpy")
    y, _ = _block(ref, x, w, b, None, shape)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    want, _ = _block(ref, x, w, b, dy, shape)
    got, ctx = _block(fused, x, w, b, dy, shape)
    assert isinstance(ctx, _block_module(fused).FusedContext)  # the fused kernels ran
    _compare(fused, got, want, dtype)


@pytest.mark.parametrize("threads, images, dx_rows", [(0, 8, 2), (0, 3, 1), (10 ** 9, 1, 3)])
@pytest.mark.parametrize("name", ["lenet-conv2-batch5", "stride2-overlapping-pool"])
def test_every_launch_shape_gives_numpys_results(fused, monkeypatch, name, threads, images,
                                                 dx_rows):
    """Up to 8 channels per thread (several pooled rows per block) or one, 1 to 8
    images per block (an uneven last chunk), 1 to 3 input rows per dx block."""
    module = _block_module(fused)
    for constant, value in (("FUSED_THREADS", threads), ("BLOCK_IMAGES", images),
                            ("DX_ROWS", dx_rows)):
        monkeypatch.setattr(module, constant, value)
    shape = (6, 14, 5, 16, 5, 1, 0, 2, 2, True) if name == "lenet-conv2-batch5" else SHAPES[name]
    C, H, N, K, KH, stride, pad, size, ps, _ = shape
    PH = _pooled(shape)
    plan = module.plan_forward(C, K, N, KH, KH, stride, PH, PH, size, ps, 4)
    assert plan[3] == (min(8, K) if threads == 0 else 1) and plan[0] == min(N, images)
    _fused_matches_numpy(fused, module, shape, seed=10)


@pytest.mark.parametrize("shape", [(2, 9, 5, 24, 3, 1, 1, 2, 2, True),
                                   (3, 13, 7, 20, 4, 2, 2, 3, 1, False)])
def test_output_channels_split_over_block_groups_give_numpys_results(fused, monkeypatch, shape):
    """Blocks that each take a group of the output channels (KG < K), as conv2's forward
    is planned at batch 16-128."""
    module = _block_module(fused)
    monkeypatch.setattr(module, "BLOCK_THREADS", 16)
    monkeypatch.setattr(module, "FUSED_THREADS", 0)
    C, H, N, K, KH, stride, pad, size, ps, _ = shape
    PH = _pooled(shape)
    assert module.plan_forward(C, K, N, KH, KH, stride, PH, PH, size, ps, 4)[2] < K
    _fused_matches_numpy(fused, module, shape, seed=3)


def test_a_dy_of_the_wrong_shape_is_one_line(fused):
    shape = SHAPES["3x3-pad1"]
    x, w, b = _inputs(shape, np.float32, seed=4)
    y, ctx = _block(fused, x, w, b, None, shape)
    with pytest.raises(ArrayError, match=r"dy must be \(5, 4, 4, 5\)"):
        fused.conv2d_relu_maxpool2d_backward(fused.asarray(np.ones((5, 4, 4, 4), np.float32)),
                                             ctx)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ties_send_the_gradient_to_the_first_maximum(fused, dtype):
    """Half the input blank: windows of exactly equal conv outputs; each window's
    gradient must reach its first maximum only, as NumPy's (and PyTorch's)."""
    shape = (2, 12, 3, 3, 3, 1, 1, 2, 2, True)
    x, w, b = _inputs(shape, dtype, seed=5, ties=True)
    ref = get_backend("numpy")
    y, _ = _block(ref, x, w, b, None, shape)
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(dtype)
    want, _ = _block(ref, x, w, b, dy, shape)
    got, _ = _block(fused, x, w, b, dy, shape)
    _compare(fused, got, want, dtype)


def test_first_layer_skips_dx_and_the_separate_backward_reads_the_fused_ctx(fused):
    """need_dx=False gives no dx; the fused forward's ctx is the chain's, so the separate
    kernels' backward (pool.cu, conv2d.cu) gives the same gradients from it."""
    shape = SHAPES["lenet-conv1"]
    x, w, b = _inputs(shape, np.float64, seed=3)
    y, ctx = _block(fused, x, w, b, None, shape)
    dy = fused.asarray(np.random.default_rng(3).standard_normal(y.shape))
    got = fused.conv2d_relu_maxpool2d_backward(dy, ctx, need_dx=False)
    chained = ReferenceBackend.conv2d_relu_maxpool2d_backward(fused, dy, ctx, need_dx=True)
    assert got[0] is None
    _compare(fused, got[1:], [fused.to_numpy(a) for a in chained[1:]], np.float64,
             names=("dw", "db"))


def test_two_runs_give_the_same_bits(fused):
    """Forward and backward twice (the second backward on the same ctx, as a replay
    runs it: the ticket counter must be back at zero): equal bit for bit."""
    shape = SHAPES["stride2-overlapping-pool"]
    x, w, b = _inputs(shape, np.float32, seed=4)
    y, _ = _block(fused, x, w, b, None, shape)
    dy = np.random.default_rng(4).standard_normal(y.shape).astype(np.float32)
    runs = []
    for _ in range(2):
        got, ctx = _block(fused, x, w, b, dy, shape)
        again = fused.conv2d_relu_maxpool2d_backward(fused.asarray(dy), ctx)
        runs.append([fused.to_numpy(a) for a in (*got, *again)])
    for first, second in zip(*runs):
        np.testing.assert_array_equal(first, second)
    for grad, repeat in zip(runs[0][1:4], runs[0][4:]):
        np.testing.assert_array_equal(grad, repeat)


def test_a_recorded_block_step_replays_equal_to_plain_calls(fused):
    """Forward and backward recorded as one (emulated) CUDA graph and replayed on new
    inputs give the bits of plain calls."""
    if fused.xp.__version__ != "host-emulation":
        pytest.skip("the real graphs are checked by test_cupy.py's captured training steps")
    # the emulated CapturedStep: the one the emulated backend's module imported
    CapturedStep = type(fused).capture_step.__globals__["CapturedStep"]
    shape = SHAPES["3x3-pad1"]
    _, w, b = _inputs(shape, np.float32, seed=6)
    wd, bd = fused.asarray(w), fused.asarray(b)

    def step(x, dy):
        y, ctx = fused.conv2d_relu_maxpool2d_forward(x, wd, bd, 1, 1, 2, 2)
        return (y, *fused.conv2d_relu_maxpool2d_backward(dy, ctx))

    recorded = CapturedStep(step, lambda: (), log=lambda line: None)
    rng = np.random.default_rng(7)
    for k in range(4):  # warm-up, recording, two replays
        x = rng.standard_normal((3, 9, 9, 5)).astype(np.float32)
        dy = rng.standard_normal((5, 4, 4, 5)).astype(np.float32)
        got = [a.copy() for a in recorded(fused.asarray(x), fused.asarray(dy))]
        want = step(fused.asarray(x), fused.asarray(dy))
        for g, r in zip(got, want):
            np.testing.assert_array_equal(g, fused.to_numpy(r))
    (recording,) = recorded.graphs.values()
    assert recording.graph.launches == 3
    assert [f.name for f, *_ in recording.graph.tape] == ["conv_block_forward_f32",
                                                         "conv_block_backward_f32"]


def test_tiles_too_large_for_a_block_run_the_separate_kernels(fused):
    """72 input channels of 12 columns in float64 overflow the shared tile: the separate
    kernels run (their ctx), with NumPy's results."""
    shape = (72, 12, 1, 2, 5, 1, 0, 2, 2, True)
    x, w, b = _inputs(shape, np.float64, seed=8)
    ref = get_backend("numpy")
    y, _ = _block(ref, x, w, b, None, shape)
    dy = np.random.default_rng(8).standard_normal(y.shape)
    want, _ = _block(ref, x, w, b, dy, shape)
    got, ctx = _block(fused, x, w, b, dy, shape)
    assert not isinstance(ctx, _block_module(fused).FusedContext)
    _compare(fused, got, want, np.float64)


def test_separate_is_the_default_and_a_bad_switch_is_one_line(cuda_backend, monkeypatch):
    shape = SHAPES["3x3-pad1"]
    x, w, b = _inputs(shape, np.float32, seed=9)
    FusedContext = _block_module(cuda_backend).FusedContext
    for value in (None, "", "separate", " Separate "):
        if value is None:
            monkeypatch.delenv(SWITCH, raising=False)
        else:
            monkeypatch.setenv(SWITCH, value)
        assert not isinstance(_block(cuda_backend, x, w, b, None, shape)[1], FusedContext)
    monkeypatch.setenv(SWITCH, "fast")
    with pytest.raises(ConfigError) as info:
        _block(cuda_backend, x, w, b, None, shape)
    assert str(info.value) == (f"{SWITCH}='fast' is not a kernel set; set it to 'fused' or "
                               "'separate', or unset it (separate)")


def test_lenet5_gradients_with_fused_blocks_match_numpy(fused, monkeypatch):
    """A LeNet-5 forward, loss and backward (float64, batch 7) through the layers: the
    conv blocks run the fused kernels, and every parameter's gradient is NumPy's."""
    if fused.xp.__version__ != "host-emulation":
        pytest.skip("the launch log is the emulation's; test_cupy.py trains on the device")
    import host_cuda

    from fastlenet.nn import SoftmaxCrossEntropy, build_model

    names, real_call = [], host_cuda._Function.__call__

    def logged(self, grid, block, args):
        names.append(self.name)
        return real_call(self, grid, block, args)
    monkeypatch.setattr(host_cuda._Function, "__call__", logged)
    rng = np.random.default_rng(11)
    x, labels = rng.random((7, 1, 32, 32)), rng.integers(0, 10, 7)
    grads = {}
    for be in (get_backend("numpy"), fused):
        model = build_model("lenet5", be, dtype="float64", seed=2)
        loss_fn = SoftmaxCrossEntropy(backend=be)
        loss_fn.forward(model.forward(be.to_batch_last(be.asarray(x))), be.asarray(labels))
        model.backward(loss_fn.backward())
        grads[be] = {k: be.to_numpy(p.grad) for k, p in model.named_parameters().items()}
    assert names.count("conv_block_forward_f64") == names.count("conv_block_backward_f64") == 2
    assert not {"conv2d_forward_f64", "maxpool2d_forward_f64"} & set(names)
    want, got = grads.values()
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-9, atol=1e-12, err_msg=key)


def test_launch_constants_match_the_kernel_source(cuda_backend):
    module = _block_module(cuda_backend)
    text = (ROOT / "kernels" / "conv_block.cu").read_text(encoding="utf-8")
    assert module.SMEM_BYTES == int(re.search(r"#define BLOCK_SMEM_BYTES (\d+)", text).group(1))
    assert module.BLOCK_KR == int(re.search(r"#define BLOCK_KR (\d+)", text).group(1))


def test_the_launch_counter_counts_fewer_launches_with_fused_blocks():
    """``python -m benchmarks.gpu_kernels launches`` on the emulation (no GPU here) or
    the device: the fused conv blocks take launches out of a recorded LeNet-5 step."""
    load_cuda_backend("on-cpu")  # skips where the emulation cannot run
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_kernels", "launches"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    counts = dict(re.findall(r"(\w+) kernels: launches per training step: (\d+)", done.stdout))
    assert set(counts) == {"separate", "fused"}, done.stdout
    assert int(counts["fused"]) < int(counts["separate"]), done.stdout
    assert "counted on " in done.stdout
