"""The Numba backend's own promises: a 50-step training run that follows NumPy's losses,
NaN propagation, the compile notice, the debuggable pure-Python copy, and BLAS threads
left as found.

(Every kernel test of test_kernels.py also runs on numba: against the naive references
through the backend fixture, and against the reference backend on random shapes.)
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastlenet import backends
from fastlenet.nn import SoftmaxCrossEntropy, build_model
from fastlenet.optim import Adam

pytestmark = pytest.mark.skipif("numba" not in backends.usable(),
                                reason=f"numba backend unusable: {backends.status()['numba']}")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def numba_be():
    return backends.get_backend("numba")


def _close(actual, expected):
    """float32 agreement, scaled to the array's size (sums of up to ~1e3 products)."""
    scale = max(float(np.abs(expected).max()), 1e-6)
    np.testing.assert_allclose(actual, expected, rtol=2e-4, atol=2e-5 * scale)


def test_maxpool_keeps_a_nan(numba_be):
    """A NaN must reach the loss (where training stops) rather than lose to a number."""
    x = np.zeros((1, 2, 2, 3), dtype=np.float32)
    x[0, 1, 1, 0] = np.nan  # last in its window
    x[0, 0, 0, 1] = np.nan  # first in its window
    y, _ = numba_be.maxpool2d_forward(x, 2, 2)
    assert np.isnan(y[0, 0, 0, :2]).all() and y[0, 0, 0, 2] == 0


def _losses(backend_name: str, steps: int = 50) -> list[float]:
    """Losses of a fixed-seed LeNet-5 run on MNIST batches: same data, same init."""
    from fastlenet.data import load_dataset, prepare

    backend = backends.get_backend(backend_name)
    data = prepare(load_dataset("mnist"), val_size=0, seed=0, train_limit=steps * 64)
    model = build_model("lenet5", backend, seed=0)
    loss_fn = SoftmaxCrossEntropy(backend=backend)
    optimizer = Adam(model.parameters(), backend, lr=2e-3)
    losses = []
    for step in range(steps):
        xb = backend.to_batch_last(backend.asarray(data.x_train[step * 64:(step + 1) * 64]))
        logits = model.forward(xb)
        losses.append(float(loss_fn.forward(logits, backend.asarray(data.y_train[step * 64:(step + 1) * 64]))))
        model.backward(loss_fn.backward())
        optimizer.step()
    return losses


def test_fifty_training_steps_follow_numpy(numba_be):
    got, want = np.array(_losses("numba")), np.array(_losses("numpy"))
    assert want[-10:].mean() < 0.5 * want[:10].mean()  # it learned
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_blas_threads_are_left_as_found(numba_be):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [lib["num_threads"] for lib in threadpoolctl.threadpool_info()]
    x = np.ones((400, 64), np.float32)
    y, ctx = numba_be.linear_forward(x, np.ones((120, 400), np.float32), np.ones(120, np.float32))
    numba_be.linear_backward(y, ctx)
    assert [lib["num_threads"] for lib in threadpoolctl.threadpool_info()] == before


def test_auto_picks_numba_when_no_gpu_backend_is_usable():
    ahead = list(backends._REGISTRY)[:list(backends._REGISTRY).index("numba")]
    if any(name in backends.usable() for name in ahead):
        pytest.skip(f"a faster backend is usable here: {ahead}")
    assert backends.get_backend("auto").name == "numba"


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=600)


def test_first_run_reports_its_compile_and_a_cached_run_does_not(tmp_path):
    code = """
        import json, time
        import numpy as np
        from fastlenet.backends import get_backend
        from fastlenet.backends.numba import jit
        tick = time.perf_counter()
        be = get_backend("numba")
        note = be.prepare(np.float32)
        seconds = time.perf_counter() - tick
        # compact's conv2 (Winograd's path, which prepare's tiny shapes do not take)
        misses = jit.cache_misses()
        x, w = np.ones((16, 14, 14, 4), np.float32), np.ones((32, 16, 3, 3), np.float32)
        y, ctx = be.conv2d_forward(x, w, np.zeros(32, np.float32), 1, 1)
        be.conv2d_backward(y, ctx)
        print(json.dumps([note, seconds, jit.cache_misses() - misses]))
    """
    # the tuner's own note (a choice measured now) is another test's: a machine too busy
    # for steady timings measures again in the second process and says so
    first = _python(code, NUMBA_CACHE_DIR=str(tmp_path), FASTLENET_TUNING="off")
    second = _python(code, NUMBA_CACHE_DIR=str(tmp_path), FASTLENET_TUNING="off")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    (note, _, late), (again, cached_seconds, _) = (json.loads(r.stdout.splitlines()[-1])
                                                   for r in (first, second))
    assert note.startswith("numba: compiled the float32 kernels in ") and "cache" in note
    assert late == 0, "prepare left a kernel of compact's conv2 to compile in a step"
    assert again is None and cached_seconds < 10


def test_pure_python_copy_gives_the_same_results(tmp_path):
    """NUMBA_DISABLE_JIT=1 turns every kernel into its plain Python function (the
    debuggable copy); it must compute what the compiled kernels compute."""
    code = """
        import numpy as np
        from fastlenet.backends.numba.backend import NumbaBackend
        be = NumbaBackend()
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
        w = rng.standard_normal((3, 2, 5, 3)).astype(np.float32)
        y, ctx = be.conv2d_forward(x, w, w[0, 0, 0], 1, 1)
        dx, dw, db = be.conv2d_backward(y, ctx)
        p, pctx = be.relu_maxpool2d_forward(y, 2, 2)
        out = [y, dx, dw, db, p, be.relu_maxpool2d_backward(p, pctx)]
        for size in (2, 3):  # the conv block's 2x2 path and its general one
            block, bctx = be.conv2d_relu_maxpool2d_forward(x, w, w[0, 0, 0], 1, 1, size, size)
            out += [block, *be.conv2d_relu_maxpool2d_backward(block, bctx)]
        out.append(be.to_batch_last(x, np.array([1, -2, 0, 1])))
        wide = rng.standard_normal((8, 5, 4, 3)).astype(np.float32)  # long sums: tiles
        y8, ctx8 = be.conv2d_forward(wide, rng.standard_normal((3, 8, 3, 3)).astype(np.float32),
                                     None, 1, 1)
        out += [y8, *be.conv2d_backward(y8, ctx8)[:2]]
        from fastlenet.backends.numba import winograd
        winograd.MIN_CHANNEL_RATIO, winograd.MAX_OVERHANG = 0, 100.0  # Winograd's path
        y9, ctx9 = be.conv2d_forward(wide, rng.standard_normal((3, 8, 3, 3)).astype(np.float32),
                                     None, 1, 1)
        out += [y9, *be.conv2d_backward(y9, ctx9)[:2]]
        np.savez(OUT, *out)
    """
    results = []
    for disable in ("1", "0"):
        out = str(tmp_path / f"jit-disabled-{disable}.npz")
        run = _python(code.replace("OUT", repr(out)), NUMBA_DISABLE_JIT=disable)
        assert run.returncode == 0, run.stderr
        with np.load(out) as saved:
            results.append([saved[key] for key in sorted(saved.files)])
    for plain, compiled in zip(*results):
        _close(plain, compiled)


def test_input_gradient_after_another_kernel_width_of_the_same_widened_width():
    """The zero-margined copy of dy is kept per shape; a convolution with another kernel
    width whose dy widens to the same width must not find the first one's values in its
    margins (a 1x4 kernel on 8 output columns, then 1x6 on 4: both widen to 14)."""
    nb, npb = backends.get_backend("numba"), backends.get_backend("numpy")
    rng = np.random.default_rng(1)

    def dx(be, x, w):
        y, ctx = be.conv2d_forward(x, w, None, 1, 0)
        return be.conv2d_backward(np.ones_like(y), ctx)[0]

    x4, w4 = rng.standard_normal((1, 3, 11, 2)), rng.standard_normal((1, 1, 1, 4))
    x6, w6 = rng.standard_normal((1, 3, 9, 2)), rng.standard_normal((1, 1, 1, 6))
    dx(nb, x4, w4)
    _close(dx(nb, x6, w6), dx(npb, x6, w6))


@pytest.mark.parametrize("shape", [(1600, 128), (257, 129), (33, 2000), (16, 16), (1, 40000)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tiled_transpose_is_the_transpose(numba_be, shape, dtype):
    """The parallel copy the linear layers take for tall activations: every element, tiles
    cut by both edges, and a strided view as input (the backend copies it first)."""
    from fastlenet.backends.numba import layout

    a = np.random.default_rng(shape[0]).standard_normal(shape).astype(dtype)
    out = np.empty(shape[::-1], dtype)
    layout.transposed(a, out)
    np.testing.assert_array_equal(out, a.T)
    view = np.repeat(a, 2, axis=1)[:, ::2]  # same values, a stride of two elements
    got = numba_be._transposed(view)
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, a.T)


@pytest.mark.parametrize("C, K, H, N, bias", [(16, 120, 5, 128, True), (3, 4, 3, 5, False),
                                          (1, 1, 1, 1, True), (2, 7, 4, 1, True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_whole_window_convolution_backward_is_the_references(numba_be, C, K, H, N, bias, dtype):
    """A convolution whose one window is its whole input (classic's C5) takes the linear
    layers' products backward: every gradient as the reference's, and none for x when
    need_dx is False."""
    ref = backends.get_backend("numpy")
    rng = np.random.default_rng(C * K + H)
    x = rng.standard_normal((C, H, H, N)).astype(dtype)
    w = rng.standard_normal((K, C, H, H)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype) if bias else None
    y, ctx = numba_be.conv2d_forward(x, w, b, 1, 0)
    dy = rng.standard_normal(y.shape).astype(dtype)
    want = ref.conv2d_backward(dy, ref.conv2d_forward(x, w, b, 1, 0)[1])
    got = numba_be.conv2d_backward(dy, ctx)
    for a, e in zip(got, want):
        if e is None:
            assert a is None
        else:
            assert a.shape == e.shape and a.dtype == e.dtype
            if dtype == np.float32:
                _close(a, e)
            else:
                np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)
    assert numba_be.conv2d_backward(dy, ctx, need_dx=False)[0] is None


def test_philox_known_answer():
    """Random123's known answer for Philox4x32-10 with a zero key and counter."""
    from fastlenet.backends.numba.random import philox_words

    zero = np.uint64(0)
    assert [int(w) for w in philox_words(zero, zero, zero, zero)] == \
        [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_generator_draws_uniforms_and_normals_and_restores(numba_be, dtype):
    """The numbers' distributions, a saved state continuing the same stream, draws that
    differ after it, and a wrong dtype or another generator's state refused."""
    rng = numba_be.default_rng(7)
    u = rng.random((1000, 1001), dtype=dtype)
    assert u.dtype == dtype and u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 2e-3 and abs(u.var() - 1 / 12) < 2e-3
    assert abs(np.corrcoef(u.ravel()[:-1], u.ravel()[1:])[0, 1]) < 5e-3
    z = rng.standard_normal((1000, 1001), dtype=dtype)
    assert z.dtype == dtype and np.isfinite(z).all()
    z = z.astype(np.float64)
    assert abs(z.mean()) < 5e-3 and abs(z.var() - 1) < 5e-3
    assert abs((np.abs(z) > 1.96).mean() - 0.05) < 2e-3
    state = numba_be.rng_state(rng)
    json.dumps(state)  # goes into checkpoint metadata
    first = rng.random(257, dtype=dtype)
    again = numba_be.default_rng(0)
    numba_be.set_rng_state(again, state)
    np.testing.assert_array_equal(again.random(257, dtype=dtype), first)
    assert not np.array_equal(rng.random(257, dtype=dtype), first)
    with pytest.raises(TypeError, match="float32 or float64"):
        rng.random(3, dtype=np.int32)
    with pytest.raises(ValueError, match="'MT19937' generator state does not fit"):
        numba_be.set_rng_state(rng, {"bit_generator": "MT19937"})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p, shape", [(0.25, (1600, 128)), (0.3, (7, 5)), (1e-4, (3, 40000))])
def test_dropout_in_one_pass_is_the_base_maths_bit_for_bit(numba_be, dtype, p, shape):
    """The fused mask-and-scale kernel (serial and parallel sizes) against base.Backend's
    array maths on the same generator state, both ways; a NaN stays a NaN."""
    from fastlenet.backends.base import Backend

    rng = np.random.default_rng(len(shape))
    x, dy = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    x[0, 0] = np.nan
    y, ctx = numba_be.dropout_forward(x, p, numba_be.default_rng(3))
    y_ref, mask = Backend.dropout_forward(numba_be, x, p, numba_be.default_rng(3))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(numba_be.dropout_backward(dy, ctx),
                                  Backend.dropout_backward(numba_be, dy, mask))


def test_generator_resumes_an_older_checkpoints_pcg64_state(numba_be):
    """Checkpoints of versions before Philox hold NumPy's PCG64 state: it still resumes,
    with a key of its own that the same state always gives and another state does not;
    a damaged one is refused with the error a checkpoint load reports in one line."""
    old = np.random.default_rng(3).bit_generator.state
    a, b, c = (numba_be.default_rng(i) for i in range(3))
    numba_be.set_rng_state(a, old)
    numba_be.set_rng_state(b, old)
    numba_be.set_rng_state(c, np.random.default_rng(4).bit_generator.state)
    first = a.random(100)
    np.testing.assert_array_equal(first, b.random(100))
    assert not np.array_equal(first, c.random(100))
    assert numba_be.rng_state(a)["bit_generator"] == "Philox4x32-10"
    for damaged in ({"bit_generator": "PCG64"}, {"bit_generator": "PCG64", "state": [1, 2]},
                    {"bit_generator": "Philox4x32-10", "key": 1}):
        with pytest.raises((TypeError, ValueError)):
            numba_be.set_rng_state(a, damaged)


@pytest.mark.parametrize("shape, pad", [((16, 14, 14, 128), 1), ((3, 5, 4, 7), 2), ((1, 1, 1, 1), 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parallel_padding_is_the_references(numba_be, shape, pad, dtype):
    """The convolution's padded input (a fresh array, every margin zero; rows 16 x 128
    float32 values wide, 8 KB, get a 17th column of zeros) and dy between zero margins in
    the kept buffer, however many times it is refilled."""
    from fastlenet.backends.reference import ReferenceBackend

    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(dtype)
    got = numba_be._padded(x, pad)
    want = ReferenceBackend._padded(numba_be, x, pad)
    extra = 1 if (want.shape[2] * want.shape[3] * want.itemsize) % 4096 == 0 else 0
    assert got.shape == want.shape[:2] + (want.shape[2] + extra, want.shape[3])
    assert extra == (shape == (16, 14, 14, 128))
    np.testing.assert_array_equal(got[:, :, :want.shape[2]], want)
    assert not got[:, :, want.shape[2]:].any()
    assert numba_be._padded(x, pad) is not got
    for _ in range(2):
        dy = rng.standard_normal(shape).astype(dtype)
        wide = numba_be._widened(dy[:, :, ::-1], pad)  # a strided view is copied first
        np.testing.assert_array_equal(wide, np.pad(dy[:, :, ::-1], [(0, 0), (0, 0), (pad, pad), (0, 0)]))


@pytest.mark.parametrize("shape", [(120, 128, 400), (10, 88, 96), (7, 5, 33), (1, 1, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_gemm_blocking_matches_and_sums_alike(shape, dtype):
    """Each register blocking the tuner may choose gives A @ B.T + bias, and the same bits
    as the others: a machine's choice must not change a training run's results."""
    from fastlenet.backends.numba import dense

    R, S, L = shape
    rng = np.random.default_rng(R * S * L)
    a, b = rng.standard_normal((R, L)).astype(dtype), rng.standard_normal((S, L)).astype(dtype)
    bias = rng.standard_normal(R).astype(dtype)
    outs = {}
    for name, size in dense.BLOCKINGS.items():
        outs[name] = np.empty((R, S), dtype)
        dense.gemm_nt(dense.padded_rows(a), dense.padded_rows(b), bias, outs[name], size)
        _close(outs[name], a @ b.T + bias[:, None])
    first, *rest = outs.values()
    for other in rest:
        np.testing.assert_array_equal(other, first)


def test_the_linear_layers_use_the_machines_choice(tmp_path):
    """prepare() measures the blockings once per machine and says which it chose; the
    next process reads the choice back, silently; FASTLENET_TUNING=off uses 4x4."""
    script = ("import numpy as np\nfrom fastlenet.backends.numba.backend import NumbaBackend\n"
              "b = NumbaBackend(); print(b.prepare(np.float32)); print(b.gemm_choice().how)")
    env = dict(os.environ, FASTLENET_CACHE_DIR=str(tmp_path))

    def run(**extra):
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env=dict(env, **extra), check=True, cwd=REPO).stdout

    first = run()
    if not (tmp_path / "tuning.json").exists():
        pytest.skip(f"the machine was too busy for steady timings: {first.strip()}")
    (entry,) = json.loads((tmp_path / "tuning.json").read_text()).values()
    assert f"chose {entry['numba.gemm_nt.forward']['variant']} blocks" in first
    assert run().splitlines()[-1] == f"from {tmp_path / 'tuning.json'}"
    assert run(FASTLENET_TUNING="off").splitlines()[-1] == "default (FASTLENET_TUNING=off)"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 2, 4])
@pytest.mark.parametrize("run", [0, 5, 8, 24, 37, 90])
@pytest.mark.parametrize("terms", [0, 1, 40, 100])
@pytest.mark.parametrize("mode", ["add", "set"])
def test_register_tiles_sum_shifted_runs(rows, run, terms, dtype, mode):
    """tiles.rows_multiply_add adds sum_t w[t*rows + r] * x[xbase + off[t] + m] to each
    of its rows (rows_multiply_set writes init[r] plus it), over whole tiles, one-vector
    tiles and single values, with terms past one chunk, offsets of either sign, and rows
    that do not touch."""
    from fastlenet.backends.numba import tiles

    rng = np.random.default_rng(rows * 1000 + run * 10 + terms)
    x = rng.standard_normal(400).astype(dtype)
    xbase = 150
    off = rng.integers(-150, 400 - 150 - run + 1, size=terms).astype(np.intp)
    w = rng.standard_normal(terms * rows).astype(dtype)
    init = rng.standard_normal(rows).astype(dtype)
    out = rng.standard_normal(3 + rows * (run + 7)).astype(dtype)
    want = out.copy()
    for r in range(rows):
        for m in range(run):
            start = want[3 + r * (run + 7) + m] if mode == "add" else init[r]
            want[3 + r * (run + 7) + m] = start + sum(
                float(w[t * rows + r]) * float(x[xbase + off[t] + m]) for t in range(terms))
    if mode == "add":
        tiles.rows_multiply_add(out, 3, run + 7, rows, run, x, xbase, off, w)
    else:
        tiles.rows_multiply_set(out, 3, run + 7, rows, run, x, xbase, off, w, init)
    np.testing.assert_allclose(out, want, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-4 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("C, K", [(1, 6), (8, 1), (8, 2), (11, 3), (9, 5), (7, 6), (10, 9)])
def test_convolutions_on_tiles_match_numpy(numba_be, C, K, monkeypatch):
    """The register tiles in the forward, the conv block and the input gradient: every
    block split of K output and C input channels (4s, then a 2, then a 1), against the
    NumPy backend. Winograd's path is switched off, to reach the tiles with 3x3."""
    from fastlenet.backends.numba import winograd

    monkeypatch.setattr(winograd, "MIN_CHANNEL_RATIO", 1 << 30)
    npb = backends.get_backend("numpy")
    rng = np.random.default_rng(K)
    x = rng.standard_normal((C, 8, 7, 13)).astype(np.float32)
    w = (rng.standard_normal((K, C, 3, 3)) / 8).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    for be_args in ((1,), (0,)):
        got, got_ctx = numba_be.conv2d_forward(x, w, b, 1, *be_args)
        want, want_ctx = npb.conv2d_forward(x, w, b, 1, *be_args)
        _close(got, want)
        dy = rng.standard_normal(got.shape).astype(np.float32)
        for g, e in zip(numba_be.conv2d_backward(dy, got_ctx), npb.conv2d_backward(dy, want_ctx)):
            _close(g, e)
    got, got_ctx = numba_be.conv2d_relu_maxpool2d_forward(x, w, b, 1, 1, 2, 2)
    want, want_ctx = npb.conv2d_relu_maxpool2d_forward(x, w, b, 1, 1, 2, 2)
    _close(got, want)
    dy = rng.standard_normal(got.shape).astype(np.float32)
    for g, e in zip(numba_be.conv2d_relu_maxpool2d_backward(dy, got_ctx),
                    npb.conv2d_relu_maxpool2d_backward(dy, want_ctx)):
        _close(g, e)


WINOGRAD_CASES = [  # C, K, H, W, pad, N: odd sizes (a last half block), 1x1 and 2x2, no images
    (8, 8, 14, 14, 1, 128), (16, 32, 7, 7, 0, 64), (9, 5, 6, 9, 2, 3), (12, 9, 5, 4, 1, 1),
    (8, 3, 3, 3, 1, 7), (10, 12, 2, 2, 1, 33), (33, 6, 4, 5, 0, 2), (1, 2, 4, 4, 1, 9),
    (8, 8, 4, 4, 1, 0),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C, K, H, W, pad, N", WINOGRAD_CASES)
def test_winograd_convolutions_match_numpy(numba_be, C, K, H, W, pad, N, dtype, monkeypatch):
    """Winograd's F(2x2, 3x3), taken for every 3x3 stride-1 shape here (its thresholds
    set aside): forward and every gradient against the NumPy backend, the forward and
    the input gradient each through it once."""
    from fastlenet.backends.numba import winograd

    monkeypatch.setattr(winograd, "MIN_CHANNEL_RATIO", 0)
    monkeypatch.setattr(winograd, "MAX_OVERHANG", 100.0)
    calls = []
    real = winograd.conv2d
    monkeypatch.setattr(winograd, "conv2d", lambda *args: calls.append(1) or real(*args))
    npb = backends.get_backend("numpy")
    rng = np.random.default_rng(C * 100 + K)
    x = rng.standard_normal((C, H, W, N)).astype(dtype)
    w = (rng.standard_normal((K, C, 3, 3)) / 4).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    got, got_ctx = numba_be.conv2d_forward(x, w, b, 1, pad)
    want, want_ctx = npb.conv2d_forward(x, w, b, 1, pad)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(got, want, **tol)
    dy = rng.standard_normal(got.shape).astype(dtype)
    for g, e in zip(numba_be.conv2d_backward(dy, got_ctx), npb.conv2d_backward(dy, want_ctx)):
        np.testing.assert_allclose(g, e, **tol)
    assert len(calls) == 2


@pytest.mark.parametrize("C, K, H, pad, taken", [
    (16, 32, 14, 1, True),    # compact's conv2
    (32, 16, 14, 2, True),    # its input gradient (a convolution of dy: 32 -> 16)
    (32, 64, 7, 0, False),    # compact's conv3: 5x5 outputs in 3x3 blocks, 44% more
    (64, 32, 5, 2, False),    # its input gradient: 7x7 in 4x4 blocks
    (8, 8, 28, 1, False),     # too few channels for the transforms to pay
    (1, 16, 28, 1, False),    # compact's conv1
])
def test_winograd_is_taken_where_it_wins(C, K, H, pad, taken):
    """winograd.applies picks the shapes it was measured faster on."""
    from fastlenet.backends.numba import winograd

    out = H + 2 * pad - 2
    assert winograd.applies(np.zeros((K, C, 3, 3)), 1, out, out) is taken
    assert not winograd.applies(np.zeros((K, C, 3, 3)), 2, out, out)
    assert not winograd.applies(np.zeros((K, C, 5, 5)), 1, out, out)


def test_winograd_transform_is_exact_on_integers():
    """F(2x2, 3x3) with small integer inputs and weights (halves in G's products only):
    exactly the direct sums in float64."""
    from fastlenet.backends.numba import winograd

    rng = np.random.default_rng(5)
    C, K, N = 8, 4, 3
    x = rng.integers(-3, 4, size=(C, 6, 6, N)).astype(np.float64)
    w = rng.integers(-3, 4, size=(K, C, 3, 3)).astype(np.float64)
    y = np.empty((K, 4, 4, N))
    winograd.conv2d(x, w, np.zeros(K), y, threads=2)
    want = np.einsum("kcpq,cpqijn->kijn", w,
                     np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))
                     .transpose(0, 4, 5, 1, 2, 3))
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wide_vector_tiles_sum_the_same(dtype):
    """The 64-byte tiles of AMD's AVX-512 CPUs, compiled on whatever CPU runs the test
    (LLVM splits vectors wider than the CPU's): the same sums as the plain loops."""
    import numba

    from fastlenet.backends.numba import tiles

    if numba.config.DISABLE_JIT:
        pytest.skip("the vector tiles exist only when Numba compiles")
    width = 3 * 64 // np.dtype(dtype).itemsize
    rng = np.random.default_rng(width)
    x = rng.standard_normal(200).astype(dtype)
    off = rng.integers(-40, 200 - 40 - width + 1, size=50).astype(np.intp)
    w = rng.standard_normal(50 * 4).astype(dtype)
    init = rng.standard_normal(4).astype(dtype)
    for accumulate in (True, False):
        tile = tiles._vector_tile(4, 3, 64, accumulate)

        @numba.njit
        def call(out, x, off, w, init):
            tile(out, 2, 70, x, 40, off, w, init)

        out = rng.standard_normal(2 + 3 * 70 + width + 5).astype(dtype)
        want = out.copy()
        tiles._python_tile(4, 3 * 64 // tiles.VECTOR_BYTES, accumulate)(want, 2, 70, x, 40,
                                                                        off, w, init)
        call(out, x, off, w, init)
        np.testing.assert_allclose(out, want, rtol=1e-5,
                                   atol=1e-4 if dtype == np.float32 else 1e-12)


def test_wide_vector_rows_multiply_add_sums_the_same(tmp_path):
    """The whole 64-byte path of AMD's AVX-512 CPUs (tiles, one-vector tails, 4/2/1 rows
    and the loop that drives them), built in a fresh process with the width set before
    anything compiles, so LLVM splits its vectors on whatever CPU runs the test."""
    code = """
        import numpy as np
        from fastlenet.backends.numba import tiles
        tiles.VECTOR_BYTES = 64
        for rows, name in ((4, "4"), (2, "2"), (1, "1")):
            for mode, accumulate in (("", True), ("set_", False)):
                setattr(tiles, mode + "tile_" + name,
                        tiles._vector_tile(rows, tiles.TILE_VECTORS, 64, accumulate))
                setattr(tiles, mode + "tail_" + name, tiles._vector_tile(rows, 1, 64, accumulate))
        bad = 0
        for dtype in (np.float32, np.float64):
            for rows in (1, 2, 4):
                for run in (0, 7, 16, 48, 63, 130):
                    rng = np.random.default_rng(rows * 1000 + run)
                    x = rng.standard_normal(500).astype(dtype)
                    off = rng.integers(-100, 500 - 100 - run + 1, size=45).astype(np.intp)
                    w = rng.standard_normal(45 * rows).astype(dtype)
                    init = rng.standard_normal(rows).astype(dtype)
                    out = rng.standard_normal(rows * (run + 3) + 1).astype(dtype)
                    want = out.astype(np.float64)
                    want_set = want.copy()
                    for r in range(rows):
                        for m in range(run):
                            total = sum(float(w[t * rows + r]) * float(x[100 + off[t] + m])
                                        for t in range(45))
                            want[1 + r * (run + 3) + m] += total
                            want_set[1 + r * (run + 3) + m] = init[r] + total
                    out_set = out.copy()
                    tiles.rows_multiply_add(out, 1, run + 3, rows, run, x, 100, off, w)
                    tiles.rows_multiply_set(out_set, 1, run + 3, rows, run, x, 100, off, w, init)
                    bad += not np.allclose(out, want, rtol=1e-5, atol=1e-4)
                    bad += not np.allclose(out_set, want_set, rtol=1e-5, atol=1e-4)
        print(bad)
    """
    run = _python(code, NUMBA_CACHE_DIR=str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[-1] == "0"


@pytest.mark.parametrize("name, features, width", [
    ("znver4", "+avx2,+avx512f", 64), ("znver5", "+avx512f,+fma", 64),
    ("znver3", "+avx2,+fma", 32), ("znver4", "+avx2,-avx512f", 32),
    ("sapphirerapids", "+avx512f,+avx2", 32), ("skylake", "+avx2", 32)])
def test_tile_width_follows_llvms_vector_width(monkeypatch, name, features, width):
    """64-byte vectors only where LLVM vectorizes plain loops with them: AMD's AVX-512
    CPUs; Intel's stay on 256 bits."""
    import numba

    from fastlenet.backends.numba import tiles

    monkeypatch.setattr(numba.config, "CPU_NAME", name)
    monkeypatch.setattr(numba.config, "CPU_FEATURES", features)
    assert tiles._vector_bytes() == width


def test_an_edit_to_any_kernel_module_recompiles_the_cached_kernels(tmp_path):
    """Cached kernels carry the helpers they inline from other modules (tiles.py's tiles
    in conv2d.py's kernels), so the disk cache is stamped with every module of the
    package: in a copy of the package, an edit to tiles.py alone recompiles conv2d.py's
    kernels, and the next run loads them."""
    import shutil

    copy = tmp_path / "src"
    shutil.copytree(os.path.join(REPO, "fastlenet"), copy / "fastlenet",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = """
        import numpy as np
        import fastlenet
        from fastlenet.backends.numba import conv2d, jit
        assert fastlenet.__file__.startswith(COPY), fastlenet.__file__
        xpad = np.ones((8, 5, 5, 3), np.float32)
        conv2d.conv2d_forward(xpad, np.ones((4, 8, 3, 3), np.float32), np.zeros(4, np.float32),
                              np.empty((4, 3, 3, 3), np.float32))
        print(jit.cache_misses())
    """.replace("COPY", repr(str(copy)))

    def misses():
        run = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(copy),
                                  "NUMBA_CACHE_DIR": str(tmp_path / "cache")},
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        return int(run.stdout.split()[-1])

    assert misses() > 0 and misses() == 0
    with open(copy / "fastlenet" / "backends" / "numba" / "tiles.py", "a") as tiles:
        tiles.write("\n# an edit\n")
    assert misses() > 0 and misses() == 0
