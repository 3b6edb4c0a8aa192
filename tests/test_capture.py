"""Recording a training step as a CUDA graph, without a GPU.

The cupy backend's ``CapturedStep`` runs here on the host emulation of tests/host_cuda.py:
its CUDA kernels compiled for the CPU, and streams and graphs emulated (a capturing
stream records RawModule launches; a graph replays them with the arguments recorded:
arrays by reference, scalars by value, as a real graph bakes them in). The steps used
here do all their device work in the project's kernels, so a replay is faithful.

Checked: the warm-up runs on the capture stream with the private pool, ordered by
events; every block allocated while recording is held by the recording; a change of the
host values (``signature``) drops the recordings; a failed recording keeps the step's own
error, says so in one line and runs that shape uncaptured from then on; the generator's
key and the optimizer's per-step scalars are read from the device, so restoring a
generator's state and changing the learning rate reach replays (and a baked host value
would not: a control case shows the emulation catches it); and the trainer's step passes
no host value that changes from step to step to any kernel, and names in its signature
the host values it bakes in. The real graphs are checked with ``-m gpu`` (test_cupy.py).
"""

import importlib.util
import shutil

import numpy as np
import pytest

from fastlenet.backends.base import adam_factors
from fastlenet.nn import (BatchNorm, Conv2d, Dropout, Flatten, Linear, MaxPool2d, Model, ReLU,
                          SoftmaxCrossEntropy)
from fastlenet.optim import make_optimizer
from fastlenet.training_step import TrainingStep

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None or importlib.util.find_spec("fastlenet.kernels") is None,
    reason="the host emulation needs g++ and an installed checkout (pip install -e .)")


@pytest.fixture(scope="module")
def plain():
    """The backend on the emulated cupy, its steps run uncaptured (a training step is
    not all RawModule launches, so the emulated graphs cannot replay it)."""
    import host_cuda

    return host_cuda.load_backend()


@pytest.fixture(scope="module")
def emulated():
    """(host_cuda, the cupy backend module on the emulated cupy, a backend instance)."""
    import host_cuda

    module = host_cuda.load_module()
    return host_cuda, module, module.CupyBackend()


class Log(list):
    def __call__(self, line):
        self.append(line)


def _adam_step(backend, n=37, dtype=np.float32):
    """A step made only of the project's kernels: Adam on flat arrays from a gradient
    input, reading its per-step factors from ``factors``."""
    rng = np.random.default_rng(0)
    p = backend.asarray(rng.standard_normal(n).astype(dtype))
    m, v = backend.xp.zeros(n, dtype=dtype), backend.xp.zeros(n, dtype=dtype)
    factors = backend.xp.zeros(3, dtype=dtype)

    def step(g):
        backend.adam_update_device(p, g, m, v, factors, beta1=0.9, beta2=0.999, eps=1e-8,
                                   weight_decay=0.01)
        return (p,)
    return step, factors, (p, m, v)


def _run(backend, captured, factors, grads, lrs, bake_lr_in_step=False):
    """Call ``captured(g)`` once per gradient with factors for that step's lr."""
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        values = adam_factors(lr, 0.9, 0.999, 0.01, t)
        if not bake_lr_in_step:
            backend.set_scalars(factors, values)
        captured(backend.asarray(g))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_replays_equal_plain_steps_as_the_scalars_change(emulated, dtype):
    _, module, backend = emulated
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(37).astype(dtype) for _ in range(6)]
    lrs = [1e-3, 2e-3, 5e-3, 3e-3, 1e-4, 7e-3]
    results = []
    for capture in (False, True):
        step, factors, state = _adam_step(backend, dtype=dtype)
        run = module.CapturedStep(step, lambda: (), log=Log()) if capture else step
        _run(backend, run, factors, grads, lrs)
        results.append([a.copy() for a in state])
        if capture:
            (recording,) = run.graphs.values()
            # a plain warm-up, then the recording replayed at once and 4 times more
            assert recording.graph.launches == 5
    for plain, replayed in zip(*results):
        np.testing.assert_array_equal(plain, replayed)


def test_a_host_value_baked_into_a_recording_is_caught(emulated):
    """The control: the same step with the factors written INSIDE it (host values as
    launch arguments) replays the recorded learning rate, so the results differ."""
    _, module, backend = emulated
    rng = np.random.default_rng(2)
    grads = [rng.standard_normal(37).astype(np.float32) for _ in range(5)]
    lrs = [1e-3, 2e-3, 5e-3, 3e-3, 1e-4]
    results = []
    for capture in (False, True):
        step, factors, state = _adam_step(backend)
        lr_now = iter(lrs)
        t_now = iter(range(1, 10))

        def baking(g, step=step, factors=factors):
            backend.set_scalars(factors, adam_factors(next(lr_now), 0.9, 0.999, 0.01, next(t_now)))
            return step(g)
        run = module.CapturedStep(baking, lambda: (), log=Log()) if capture else baking
        _run(backend, run, factors, grads, lrs, bake_lr_in_step=True)
        results.append(state[0].copy())
    assert not np.array_equal(results[0], results[1])


def test_warm_up_runs_on_the_capture_stream_with_the_private_pool(emulated):
    host_cuda, module, backend = emulated
    seen = []

    def step(x):
        seen.append((host_cuda.Stream.current, host_cuda._allocator.current,
                     host_cuda._capturing))
        return (backend.xp.empty(3, dtype=np.float32),)

    captured = module.CapturedStep(step, lambda: (), log=Log())
    default = host_cuda.Stream.current
    waited = len(captured.stream.waited)
    for _ in range(3):
        captured(backend.asarray(np.zeros(4, np.float32)))
    (warm_stream, warm_alloc, warm_capturing), (rec_stream, rec_alloc, rec_capturing) = seen
    assert warm_stream is captured.stream and rec_stream is captured.stream
    assert warm_alloc == captured._malloc and rec_alloc == captured._malloc
    assert warm_capturing is None and rec_capturing is captured.stream
    assert len(seen) == 2  # the third call replayed the graph
    assert host_cuda.Stream.current is default and host_cuda._allocator.current is None
    # each run on the capture stream waited for the current stream's earlier work
    assert len(captured.stream.waited) == waited + 2


def test_every_block_allocated_while_recording_is_held_by_the_recording(emulated):
    _, module, backend = emulated

    def step(x):
        scratch = [backend.xp.empty(100, dtype=np.float32) for _ in range(3)]
        del scratch  # freed by Python during the capture: its blocks must stay the graph's
        out = backend.xp.empty(4, dtype=np.float32)
        backend.set_scalars(out, [1.0, 2.0, 3.0, 4.0])
        return (out,)

    captured = module.CapturedStep(step, lambda: (), log=Log())
    x = backend.asarray(np.zeros(2, np.float32))
    captured(x)
    before = captured.pool.allocations
    captured(x)
    (recording,) = captured.graphs.values()
    # the static input is allocated before the capture begins; the 4 arrays during it
    assert captured.pool.allocations - before == 5
    assert [b.size for b in recording.blocks] == [400, 400, 400, 16]
    captured._drop()
    assert not captured.graphs


def test_a_changed_signature_drops_the_recordings_and_records_anew(emulated):
    _, module, backend = emulated
    step, factors, state = _adam_step(backend)
    key = ["train"]
    captured = module.CapturedStep(step, lambda: tuple(key), log=Log())
    g = backend.asarray(np.ones(37, np.float32))
    backend.set_scalars(factors, adam_factors(1e-3, 0.9, 0.999, 0.01, 1))
    for _ in range(3):
        captured(g)
    first = captured.graphs[(((37,), "<f4"),)]
    key[0] = "eval"
    captured(g)  # a warm-up again: nothing recorded with the old values is replayed
    assert not captured.graphs
    captured(g)
    assert captured.graphs[(((37,), "<f4"),)] is not first


def test_a_none_signature_runs_the_step_as_python(emulated):
    host_cuda, module, backend = emulated
    calls = []

    def step(x):
        calls.append(host_cuda.Stream.current)
        return (x,)
    captured = module.CapturedStep(step, lambda: None, log=Log())
    for _ in range(3):
        captured(backend.asarray(np.zeros(1, np.float32)))
    assert calls == [host_cuda.Stream.current] * 3 and not captured.graphs


class CaptureFault(RuntimeError):
    pass


def test_a_failed_recording_keeps_its_own_error_and_runs_that_shape_uncaptured(emulated):
    host_cuda, module, backend = emulated
    calls = []

    def step(x):
        calls.append(x.shape)
        if host_cuda._capturing is not None and x.shape == (3,):
            raise CaptureFault("cudaErrorStreamCaptureUnsupported: operation not permitted "
                               "when stream is capturing")
        return (x * 2,)

    log = Log()
    captured = module.CapturedStep(step, lambda: (), log=log)
    real_end = captured.stream.end_capture

    def end_capture():  # a void capture's own error, which must not hide the step's
        real_end()
        raise RuntimeError("cudaErrorStreamCaptureInvalidated")
    captured.stream.end_capture = end_capture
    three = backend.asarray(np.arange(3, dtype=np.float32))
    results = [captured(three)[0] for _ in range(4)]
    assert len(log) == 1 and "CaptureFault: cudaErrorStreamCaptureUnsupported" in log[0]
    assert "Invalidated" not in log[0] and "[(3,)]" in log[0] and "uncaptured" in log[0]
    assert host_cuda._capturing is None
    # warm-up, failed recording, its plain rerun, then plain runs: no second try
    assert calls == [(3,)] * 5
    for result in results:
        np.testing.assert_array_equal(result, [0, 2, 4])
    assert (((3,), "<f4"),) in captured.uncapturable and not captured.graphs


def test_an_error_of_the_step_itself_still_raises(emulated):
    _, module, backend = emulated
    broken = [False]

    def step(x):
        if broken[0]:
            raise ValueError("the step's own bug")
        return (x,)
    captured = module.CapturedStep(step, lambda: (), log=Log())
    x = backend.asarray(np.zeros(2, np.float32))
    captured(x)
    broken[0] = True
    with pytest.raises(ValueError, match="the step's own bug"):
        captured(x)


# ------------------------------------------------------ the generator's state
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_restoring_the_generator_reaches_a_recorded_draw(emulated, dtype):
    _, module, backend = emulated
    rng = backend.default_rng(11)
    captured = module.CapturedStep(lambda x: (rng.random(x.shape, dtype=dtype),), lambda: (),
                                    log=Log())
    x = backend.asarray(np.zeros(5, dtype))
    first = [captured(x)[0].copy() for _ in range(3)]  # warm-up, recording, replay
    saved = backend.rng_state(rng)
    later = [captured(x)[0].copy() for _ in range(2)]
    backend.set_rng_state(rng, saved)
    np.testing.assert_array_equal(captured(x)[0], later[0])
    other = backend.default_rng(12)
    backend.set_rng_state(rng, backend.rng_state(other))  # another key entirely
    np.testing.assert_array_equal(captured(x)[0], other.random(5, dtype=dtype))
    assert not np.array_equal(first[1], first[2])  # the counter moved on in the replays


# ------------------------------------------------------------ the trainer's step
def _training_step(backend, optimizer="adam"):
    """A TrainingStep of a small model with every kind of baked host value: BatchNorm,
    dropout (generator draws), label smoothing (the emulated kernels of compact's wide
    weight gradients would take minutes)."""
    model = Model([Conv2d(1, 2, 5, bias=False), BatchNorm(2), ReLU(), MaxPool2d(2), Flatten(),
                   Dropout(0.25), Linear(2 * 14 * 14, 10)], name="small", backend=backend,
                  seed=3)
    opt = make_optimizer(optimizer, model.parameters(), backend, lr=1e-3, weight_decay=0.01)
    rng = np.random.default_rng(4)
    x = backend.asarray(rng.standard_normal((40, 1, 32, 32)).astype(np.float32))
    y = backend.asarray(rng.integers(0, 10, 40))
    return TrainingStep(model, SoftmaxCrossEntropy(0.1, backend=backend), opt, x, y)


@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_no_kernel_of_a_training_step_takes_a_host_value_that_changes(plain, monkeypatch,
                                                                      optimizer):
    """Every scalar argument of every kernel launch inside the step is the same from step
    to step while the learning rate and the step count change: what changes is read from
    device memory (the optimizer's scalars, the generator's counter)."""
    import host_cuda

    backend = plain
    step = _training_step(backend, optimizer=optimizer)
    launches = []  # per step: the launches inside the step's recordable part
    inside = [False]
    real_call = host_cuda._Function.__call__

    def logged(self, grid, block, args):
        if inside[0]:
            launches[-1].append((self.name, grid, block,
                                 tuple(a.item() for a in args if isinstance(a, np.generic))))
        return real_call(self, grid, block, args)
    monkeypatch.setattr(host_cuda._Function, "__call__", logged)
    real_run = step._run

    def run(*inputs):
        launches.append([])
        inside[0] = True
        try:
            return real_run(*inputs)
        finally:
            inside[0] = False
    step._run = run
    idx = backend.asarray(np.arange(16))
    for k, lr in enumerate([1e-3, 4e-3, 2e-4]):
        step.optimizer.lr = lr
        step(idx)
        assert step.signature() is not None  # every step may be recorded, the first too
    assert launches[1] == launches[2] and len(launches[1]) >= 10
    names = {name for name, *_ in launches[1]}
    assert {"adam_update_f32" if optimizer == "adam" else "gemm_f32", "uniform_f32"} <= names


def test_sgd_reads_its_per_step_scalars_from_the_device(plain, monkeypatch):
    """SGD's update is CuPy element-wise maths, not one of the project's kernels, so the
    launch log above cannot see it: its learning rate and decay must be the optimizer's
    device scalars (views of ``_scalars``), never host floats a recording would bake in,
    from the first step on."""
    backend = plain
    step = _training_step(backend, optimizer="momentum")
    seen = []
    real_apply = type(step.optimizer)._apply

    def spy(self, p, g, buf, lr, decay):
        seen.append((lr, decay))
        return real_apply(self, p, g, buf, lr, decay)
    monkeypatch.setattr(type(step.optimizer), "_apply", spy)
    idx = backend.asarray(np.arange(16))
    for lr in (1e-3, 4e-3):
        step.optimizer.lr = lr
        step(idx)
    scalars = step.optimizer._scalars
    # each step is one flat update, the first too (its backward assigns every gradient)
    assert len(seen) == 2
    for value in (value for call in seen for value in call):
        assert not isinstance(value, (float, np.generic)) and np.shares_memory(value, scalars)


def test_the_signature_names_every_host_value_a_recording_bakes_in(plain):
    backend = plain
    step = _training_step(backend)
    idx = backend.asarray(np.arange(8))
    step(idx)
    step(idx)
    base = step.signature()
    assert base is not None
    changes = [
        lambda s: s.model.eval(),
        lambda s: setattr(s.model.layers[5], "p", 0.5),             # Dropout
        lambda s: setattr(s.model.layers[1], "momentum", 0.2),      # BatchNorm
        lambda s: setattr(s.model.layers[1], "eps", 1e-3),
        lambda s: setattr(s.loss_fn, "label_smoothing", 0.0),
        lambda s: setattr(s.optimizer, "beta1", 0.8),
        lambda s: setattr(s.optimizer, "weight_decay", 0.0),
    ]
    for change in changes:
        step = _training_step(backend)
        step(idx)
        step(idx)
        change(step)
        assert step.signature() != base
    step = _training_step(backend)
    step(idx)
    step.optimizer.lr = 5e-2  # read from the device: the recording stays valid
    step(idx)
    assert step.signature() == base


def test_the_signature_reaches_layers_inside_nested_sequentials():
    """A Dropout or BatchNorm inside a nested Sequential bakes its values into a recording
    too, so changing them must change the signature."""
    from fastlenet.nn import Sequential
    from fastlenet.step_signature import layer_settings as _settings

    model = Model([Conv2d(1, 2, 5), Sequential(BatchNorm(2), ReLU(), MaxPool2d(2)), Flatten(),
                   Sequential(Dropout(0.25), Linear(2 * 14 * 14, 10))], name="nested",
                  backend="numpy")
    base = _settings(model)
    model.layers[3].layers[0].p = 0.5
    assert _settings(model) != base
    model.layers[3].layers[0].p = 0.25
    assert _settings(model) == base
    model.layers[1].layers[0].momentum = 0.3
    assert _settings(model) != base
