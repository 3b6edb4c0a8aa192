"""The cupy backend's fused fully connected chain (kernels/dense_chain.cu), on the CPU.

The real kernels run on the host emulation of tests/host_cuda.py (and, with marker
``gpu``, on a CUDA device) against the NumPy backend's layer-by-layer reference: the
output and every gradient, float32 and float64, batch 1, odd batches and several blocks
with a short last one, LeNet-5's widths and other chains of one to four layers, absent
biases; the launches each way; same bits on every run; a recorded CUDA graph replaying
them; the fallback where a chain does not fit the kernels; and the switch
(FASTLENET_CUDA_BLOCKS) that selects them for a model.
"""

import re
from pathlib import Path

import numpy as np
import pytest

from fastlenet.backends import cupy_dense_chain as chain
from fastlenet.backends.cupy_kernel_set import SWITCH, kernel_set
from fastlenet.backends import get_backend
from fastlenet.errors import ConfigError

from helpers import load_cuda_backend

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-11, atol=1e-12)}


@pytest.fixture(scope="module", params=["on-cpu", pytest.param("device", marks=pytest.mark.gpu)])
def cuda_backend(request):
    return load_cuda_backend(request.param)


def _chain_inputs(widths, N, dtype, bias=True, seed=0):
    """x, weights, biases (He-scaled, so activations stay near 1) and dy, on the host."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((widths[0], N)).astype(dtype)
    weights = [(rng.standard_normal((o, i)) * np.sqrt(2 / i)).astype(dtype)
               for i, o in zip(widths, widths[1:])]
    present = [bias] * (len(widths) - 1) if isinstance(bias, bool) else bias
    biases = [rng.standard_normal(o).astype(dtype) * 0.1 if present[j] else None
              for j, o in enumerate(widths[1:])]
    return x, weights, biases, rng.standard_normal((widths[-1], N)).astype(dtype)


def _run(backend, inputs, need_dx=True):
    """y, dx, then each layer's dw and db, as host arrays (None where absent)."""
    x, weights, biases, dy = inputs
    dev = [None if a is None else backend.asarray(a) for a in (x, *weights, *biases, dy)]
    L = len(weights)
    y, ctx = backend.dense_chain_forward(dev[0], dev[1:1 + L], dev[1 + L:1 + 2 * L])
    dx, dws, dbs = backend.dense_chain_backward(dev[-1], ctx, need_dx=need_dx)
    return [None if a is None else backend.to_numpy(a) for a in (y, dx, *dws, *dbs)]


def _agree(got, want, dtype):
    names = ["y", "dx"] + [f"dw{i}" for i in range((len(got) - 2) // 2)] + \
        [f"db{i}" for i in range((len(got) - 2) // 2)]
    for name, g, r in zip(names, got, want, strict=True):
        if r is None:
            assert g is None, name
            continue
        assert g.dtype == r.dtype == dtype and g.shape == r.shape, name
        np.testing.assert_allclose(g, r, err_msg=name, **TOLERANCE[dtype])


def _launches(monkeypatch):
    """The names of the project's kernels launched from now on, in order."""
    import host_cuda

    names = []
    real = host_cuda._Function.__call__

    def logged(self, grid, block, args):
        names.append(self.name)
        return real(self, grid, block, args)
    monkeypatch.setattr(host_cuda._Function, "__call__", logged)
    return names


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("widths, N, bias", [
    ((400, 120, 84, 10), 1, True),          # LeNet-5, batch 1
    ((400, 120, 84, 10), 19, True),         # three blocks, the last of three images
    ((13, 7, 5), 8, True),                  # two layers, exactly one block
    ((9, 17, 6, 3), 11, (True, False, True)),  # three layers of other widths, one bias absent
    ((6, 4, 8, 5, 2), 17, False),           # four layers (the kernels' most), no biases
    ((5, 3), 9, True),                      # one layer
])
def test_fused_chain_matches_numpy(cuda_backend, monkeypatch, dtype, widths, N, bias):
    monkeypatch.setenv(SWITCH, "fused")
    inputs = _chain_inputs(widths, N, dtype, bias)
    launched = _launches(monkeypatch)
    got = _run(cuda_backend, inputs)
    blocks = -(-N // chain.images_per_block(list(widths), dtype))
    if cuda_backend.xp.__version__ == "host-emulation":
        suffix = "f32" if dtype == np.float32 else "f64"
        assert launched == [f"dense_chain_forward_{suffix}", f"dense_chain_backward_{suffix}"] \
            + [f"sum_splits_{suffix}"] * (blocks > 1)
    _agree(got, _run(get_backend("numpy"), inputs), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_without_input_gradient_the_parameter_gradients_stay(cuda_backend, dtype):
    inputs = _chain_inputs((10, 6, 4), 7, dtype, seed=1)
    full, first = _run(cuda_backend, inputs), _run(cuda_backend, inputs, need_dx=False)
    assert first[1] is None
    for g, r in zip(first[2:], full[2:]):
        np.testing.assert_array_equal(g, r)


@pytest.mark.parametrize("images", [1, 3, 64])
def test_any_number_of_images_per_block_matches_numpy(cuda_backend, monkeypatch, images):
    """One image per block (19 blocks), an uneven split, and the whole batch in one block
    (no second launch): the same values."""
    monkeypatch.setattr(chain, "CHAIN_IMAGES", images)
    inputs = _chain_inputs((30, 12, 9, 4), 19, np.float64, seed=2)
    _agree(_run(cuda_backend, inputs), _run(get_backend("numpy"), inputs), np.float64)


def test_same_bits_on_every_run(cuda_backend):
    inputs = _chain_inputs((400, 120, 84, 10), 21, np.float32, seed=3)
    first = _run(cuda_backend, inputs)
    for _ in range(2):
        for g, r in zip(_run(cuda_backend, inputs), first):
            np.testing.assert_array_equal(g, r)


def test_nan_and_zero_activations_follow_numpy(cuda_backend):
    """A NaN input stays a NaN through the ReLU (NumPy's maximum) into its column of the
    output; units the ReLU zeroes pass no gradient back."""
    inputs = list(_chain_inputs((6, 5, 3), 4, np.float64, seed=4))
    inputs[0][2, 1] = np.nan
    inputs[2][0][...] = -10.0  # the first layer's biases: every hidden unit is dead
    inputs[2][0][1] = 0.5
    got, want = _run(cuda_backend, inputs), _run(get_backend("numpy"), inputs)
    assert np.isnan(got[0][:, 1]).all() and not np.isnan(np.delete(got[0], 1, axis=1)).any()
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("widths", [(4, 5, 3, 3, 2, 2), (3, 2100, 2)],
                         ids=["five layers", "too wide for shared memory"])
def test_a_chain_the_kernels_cannot_take_runs_layer_by_layer(cuda_backend, monkeypatch, widths):
    assert chain.images_per_block(list(widths), np.float64) == 0
    inputs = _chain_inputs(widths, 3, np.float64, seed=5)
    launched = _launches(monkeypatch)
    got = _run(cuda_backend, inputs)
    assert launched and not any(name.startswith("dense_chain") for name in launched)
    _agree(got, _run(get_backend("numpy"), inputs), np.float64)


def test_a_recorded_graph_replays_the_chain(monkeypatch):
    """Forward and backward recorded once as a (emulated) CUDA graph: replays with new
    inputs give the values of plain calls, and the graph is those launches alone."""
    import host_cuda

    module = host_cuda.load_module()
    backend = module.CupyBackend()
    _, weights, biases, _ = _chain_inputs((400, 120, 84, 10), 11, np.float32, seed=6)
    weights, biases = [backend.asarray(w) for w in weights], [backend.asarray(b) for b in biases]

    def step(x, dy):
        y, ctx = backend.dense_chain_forward(x, weights, biases)
        dx, dws, dbs = backend.dense_chain_backward(dy, ctx)
        return (y, dx, *dws, *dbs)
    captured = backend.capture_step(step)
    for seed in range(7, 11):  # warm-up, recording, two replays
        x, _, _, dy = _chain_inputs((400, 120, 84, 10), 11, np.float32, seed=seed)
        got = [np.array(a) for a in captured(backend.asarray(x), backend.asarray(dy))]
        for g, r in zip(got, step(backend.asarray(x), backend.asarray(dy)), strict=True):
            np.testing.assert_array_equal(g, r)
    (recording,) = captured.graphs.values()
    assert [f.name for f, *_ in recording.graph.tape] == \
        ["dense_chain_forward_f32", "dense_chain_backward_f32", "sum_splits_f32"]


def test_the_switch_selects_the_fused_kernels(cuda_backend, monkeypatch):
    monkeypatch.delenv(SWITCH, raising=False)
    assert kernel_set() == "separate" and not cuda_backend.fuses_dense_chain()
    monkeypatch.setenv(SWITCH, " Fused ")
    assert cuda_backend.fuses_dense_chain()
    monkeypatch.setenv(SWITCH, "fast")
    with pytest.raises(ConfigError) as info:
        cuda_backend.fuses_dense_chain()
    assert str(info.value) == ("FASTLENET_CUDA_BLOCKS='fast' is not a kernel set; set it to "
                               "'fused' or 'separate', or unset it (separate)")


def test_lenet5_runs_its_chain_fused_with_the_same_names_and_values(cuda_backend, monkeypatch):
    """With the switch on, LeNet-5's three linear layers run as one step: the parameter
    names and the state dict are those of the separate kernels, and so, within rounding,
    are the logits and every gradient."""
    from fastlenet.nn import SoftmaxCrossEntropy, build_model
    from fastlenet.nn.dense_chain import DenseChain

    x = np.random.default_rng(12).standard_normal((1, 32, 32, 5))
    labels = cuda_backend.asarray(np.array([3, 1, 4, 1, 5]))
    runs = {}
    for mode in ("separate", "fused"):
        monkeypatch.setenv(SWITCH, mode)
        model = build_model("lenet5", cuda_backend, dtype="float64", seed=4)
        loss_fn = SoftmaxCrossEntropy(backend=cuda_backend)
        logits = model.forward(cuda_backend.asarray(x))
        loss = loss_fn.forward(logits, labels)
        model.backward(loss_fn.backward())
        runs[mode] = model, float(loss), {k: cuda_backend.to_numpy(p.grad)
                                          for k, p in model.named_parameters().items()}
    (separate, loss, grads), (fused, fused_loss, fused_grads) = runs["separate"], runs["fused"]
    assert DenseChain not in map(type, separate.plan)
    assert type(fused.plan[-1]) is DenseChain and len(fused.plan) == 4
    assert "Linear(400, 120)+ReLU+Linear(120, 84)+ReLU+Linear(84, 10), fused" in \
        fused.summary_text()
    assert fused.summary() == separate.summary()
    assert list(fused.state_dict()) == list(separate.state_dict())
    assert fused_loss == pytest.approx(loss, rel=1e-12)
    assert list(fused_grads) == list(grads)
    for key, value in grads.items():
        np.testing.assert_allclose(fused_grads[key], value, rtol=1e-10, atol=1e-12, err_msg=key)


def test_fused_step_passes_finite_differences(cuda_backend, monkeypatch):
    """The DenseChain step on the fused kernels, float64, against central differences."""
    from fastlenet.nn import Linear, ReLU, Sequential
    from fastlenet.nn.dense_chain import DenseChain

    from test_layers import bind, check_backward

    monkeypatch.setenv(SWITCH, "fused")
    model = bind(Sequential(Linear(9, 7), ReLU(), Linear(7, 5), ReLU(), Linear(5, 3)),
                 cuda_backend, seed=8)
    for layer in model.layers[::2]:
        layer.bias.data[...] = cuda_backend.asarray(np.linspace(-0.3, 0.4, layer.out_features))
    assert [type(step) for step in model.plan] == [DenseChain]
    check_backward(cuda_backend, model, np.random.default_rng(13).standard_normal((9, 11)))


@pytest.mark.slow  # about a minute on the emulation, the convolutions' kernels mostly
def test_training_with_the_fused_chain_follows_numpy(cuda_backend, tiny_dir, tmp_path,
                                                     monkeypatch):
    """Ten LeNet-5 steps through the trainer with the chain fused: NumPy's losses."""
    import json

    from fastlenet import backends
    from fastlenet.config import TrainConfig
    from fastlenet.train import train

    monkeypatch.setitem(backends._instances, "cupy", cuda_backend)
    launched = _launches(monkeypatch) if cuda_backend.xp.__version__ == "host-emulation" else None
    losses = {}
    for name in ("numpy", "cupy"):
        monkeypatch.setenv(SWITCH, "fused")
        config = TrainConfig(dataset="custom", data_dir=str(tiny_dir), epochs=2, batch_size=64,
                             val_size=200, seed=5, log_every=4, train_limit=320, backend=name)
        train(config, out=tmp_path / name, log=None)
        steps = json.loads((tmp_path / name / "history.json").read_text())["steps"]
        losses[name] = [s["loss"] for s in steps]
    assert len(losses["cupy"]) == 10
    assert launched is None or "dense_chain_backward_f32" in launched
    np.testing.assert_allclose(losses["cupy"], losses["numpy"], rtol=1e-3)


def test_the_launchers_constants_are_the_kernels():
    text = (ROOT / "kernels" / "dense_chain.cu").read_text(encoding="utf-8")
    for define, value in (("DC_MAX_LAYERS", chain.MAX_LAYERS),
                          ("DC_SHARED_BYTES", chain.SHARED_BYTES)):
        assert int(re.search(rf"#define {define} (\d+)", text).group(1)) == value, define


def test_a_dy_of_the_wrong_shape_or_dtype_is_refused(cuda_backend, monkeypatch):
    from fastlenet.errors import ArrayError

    monkeypatch.setenv(SWITCH, "fused")
    x, weights, biases, dy = _chain_inputs((12, 7, 3), 5, np.float32)
    _, ctx = cuda_backend.dense_chain_forward(cuda_backend.asarray(x),
                                              [cuda_backend.asarray(w) for w in weights],
                                              [cuda_backend.asarray(b) for b in biases])
    with pytest.raises(ArrayError, match=r"dy must be \(3, 5\)"):
        cuda_backend.dense_chain_backward(cuda_backend.asarray(dy[:, :4].copy()), ctx)
    with pytest.raises(TypeError, match="mixed dtypes"):
        cuda_backend.dense_chain_backward(cuda_backend.asarray(dy.astype(np.float64)), ctx)
