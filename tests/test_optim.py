"""Optimizers and learning-rate schedules: hand-computed steps, PyTorch, checkpoints."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from fastlenet.backends import get_backend
from fastlenet.errors import CheckpointError, ConfigError
from fastlenet.optim import (OPTIMIZERS, SCHEDULES, SGD, Adam, make_optimizer,
                             make_schedule)


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def make_params(backend, arrays, dtype=np.float64):
    """Stand-ins for nn.Parameter: ``.data``, ``.grad`` (None until set), ``.name``."""
    return [SimpleNamespace(data=backend.asarray(np.array(a, dtype=dtype)), grad=None,
                            name=f"{i}.weight")
            for i, a in enumerate(arrays)]


def run(opt, params, grads_per_step):
    """Set each parameter's grad (None stays None) and step, once per entry."""
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = None if g is None else opt.backend.asarray(np.array(g, dtype=p.data.dtype))
        opt.step()


def host(backend, params):
    return [np.array(backend.to_numpy(p.data)) for p in params]


# -------------------------------------------------------- hand-computed steps
# One parameter p0 = [1, -2] and three gradients, lr = 0.1.
G = [[0.5, 1.0], [-1.0, 0.25], [2.0, -0.5]]


@pytest.mark.parametrize("kind, expected", [
    # p -= 0.1 g:  [1, -2] -> [0.95, -2.1] -> [1.05, -2.125] -> [0.85, -2.075]
    ("sgd", [[0.95, -2.1], [1.05, -2.125], [0.85, -2.075]]),
    # buf: [0.5, 1] -> 0.9 buf + g = [-0.55, 1.15] -> [1.505, 0.535];  p -= 0.1 buf
    ("momentum", [[0.95, -2.1], [1.005, -2.215], [0.8545, -2.2685]]),
    # same buffers; d = g + 0.9 buf = [0.95, 1.9], [-1.495, 1.285], [3.3545, -0.0185]
    ("nesterov", [[0.905, -2.19], [1.0545, -2.3185], [0.71905, -2.31665]]),
])
def test_sgd_family_by_hand(backend, kind, expected):
    params = make_params(backend, [[1.0, -2.0]])
    opt = make_optimizer(kind, params, backend, lr=0.1)
    for step, want in enumerate(expected):
        run(opt, params, [[G[step]]])
        np.testing.assert_allclose(host(backend, params)[0], want, rtol=1e-13)
    assert opt.step_count == 3


def test_sgd_weight_decay_is_decoupled(backend):
    # lr 0.1, wd 0.5, momentum 0.9: p *= 1 - 0.05, then p -= 0.1 buf
    # step 1: [0.95, -1.9] - 0.1 [0.5, 1]        = [0.9, -2.0]
    # step 2: [0.855, -1.9] - 0.1 [-0.55, 1.15]  = [0.91, -2.015]
    # (coupled decay, g + wd p into the buffer, would give [0.865, -1.925] at step 2)
    params = make_params(backend, [[1.0, -2.0]])
    opt = make_optimizer("momentum", params, backend, lr=0.1, weight_decay=0.5)
    run(opt, params, [[G[0]]])
    np.testing.assert_allclose(host(backend, params)[0], [0.9, -2.0], rtol=1e-13)
    run(opt, params, [[G[1]]])
    np.testing.assert_allclose(host(backend, params)[0], [0.91, -2.015], rtol=1e-13)


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_adam_by_hand(backend, weight_decay):
    # lr 0.1, betas (0.5, 0.75); p0 = [1, -3]; grads [2, -0.5] then [1, -0.5].
    # Element 0, step 1: m = 1, v = 1; m^ = 1/0.5 = 2, v^ = 1/0.25 = 4 -> update 0.1 * 2/2.
    #            step 2: m = 0.5 + 0.5 = 1, v = 0.75 + 0.25 = 1; m^ = 1/0.75 = 4/3,
    #                    v^ = 1/0.4375 = 16/7 -> update 0.1 * (4/3) / (4/sqrt 7) = 0.1 sqrt(7)/3.
    # Element 1 has a constant gradient, so m^ = g and v^ = g^2: each update is -0.1.
    # Decoupled decay multiplies p by 1 - 0.1 * wd before each update.
    shrink = 1 - 0.1 * weight_decay
    params = make_params(backend, [[1.0, -3.0]])
    opt = Adam(params, backend, lr=0.1, betas=(0.5, 0.75), weight_decay=weight_decay)
    run(opt, params, [[[2.0, -0.5]]])
    p1 = np.array([1.0 * shrink - 0.1, -3.0 * shrink + 0.1])
    np.testing.assert_allclose(host(backend, params)[0], p1, rtol=1e-7)
    run(opt, params, [[[1.0, -0.5]]])
    p2 = np.array([p1[0] * shrink - 0.1 * math.sqrt(7) / 3, p1[1] * shrink + 0.1])
    np.testing.assert_allclose(host(backend, params)[0], p2, rtol=1e-7)


def test_grad_none_is_skipped(backend):
    params = make_params(backend, [[1.0, 2.0], [3.0]])
    opt = make_optimizer("adam", params, backend, lr=0.1, weight_decay=0.1)
    run(opt, params, [[[1.0, 1.0], None]])
    assert host(backend, params)[1].tolist() == [3.0]
    assert opt.param_steps == {"0.weight": 1, "1.weight": 0}


# ------------------------------------------------------------ against PyTorch
def _torch_optimizer(torch, kind, tparams, lr, weight_decay):
    if kind == "adam":
        return torch.optim.AdamW(tparams, lr=lr, weight_decay=weight_decay)
    momentum = {"sgd": 0.0, "momentum": 0.9, "nesterov": 0.9}[kind]
    return torch.optim.SGD(tparams, lr=lr, momentum=momentum, nesterov=kind == "nesterov")


@pytest.mark.torch
@pytest.mark.parametrize("kind, weight_decay", [
    ("sgd", 0.0), ("momentum", 0.0), ("nesterov", 0.0), ("adam", 0.0), ("adam", 0.05)])
def test_matches_torch(backend, torch, kind, weight_decay):
    # torch.optim.SGD's weight decay is coupled, so SGD is compared without it.
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (5,)]
    init = [rng.standard_normal(s) for s in shapes]
    # the second parameter has no gradient at step 2: both must skip it, and Adam's
    # bias correction must count that parameter's own updates
    grads = [[rng.standard_normal(s) if (step, i) != (2, 1) else None
              for i, s in enumerate(shapes)] for step in range(5)]
    params = make_params(backend, init)
    opt = make_optimizer(kind, params, backend, lr=0.05, weight_decay=weight_decay)
    tparams = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in init]
    topt = _torch_optimizer(torch, kind, tparams, lr=0.05, weight_decay=weight_decay)
    for step_grads in grads:
        run(opt, params, [step_grads])
        for tp, g in zip(tparams, step_grads):
            tp.grad = None if g is None else torch.from_numpy(g.copy())
        topt.step()
        for ours, tp in zip(host(backend, params), tparams):
            np.testing.assert_allclose(ours, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_state_dict_resume_is_bitwise(backend, kind, tmp_path):
    rng = np.random.default_rng(1)
    init = [rng.standard_normal((4, 3)), rng.standard_normal(6)]
    grads = [[rng.standard_normal(a.shape) for a in init] for _ in range(6)]

    straight = make_params(backend, init, np.float32)
    opt = make_optimizer(kind, straight, backend, lr=0.01, weight_decay=0.1)
    run(opt, straight, grads)

    first = make_params(backend, init, np.float32)
    opt = make_optimizer(kind, first, backend, lr=0.01, weight_decay=0.1)
    run(opt, first, grads[:3])
    np.savez(tmp_path / "opt.npz", **opt.state_dict())  # the trip a checkpoint makes
    resumed = make_params(backend, [backend.to_numpy(p.data) for p in first], np.float32)
    # built plain: the checkpoint's hyper-parameters (momentum, ...) must win
    opt = make_optimizer("adam" if kind == "adam" else "sgd", resumed, backend, lr=0.5)
    with np.load(tmp_path / "opt.npz") as saved:
        opt.load_state_dict(dict(saved))
    assert opt.step_count == 3
    run(opt, resumed, grads[3:])
    for a, b in zip(host(backend, straight), host(backend, resumed)):
        np.testing.assert_array_equal(a, b)


def test_state_dict_layout_and_no_aliasing(backend):
    params = make_params(backend, [[1.0, 2.0]])
    opt = make_optimizer("adam", params, backend, lr=0.1)
    run(opt, params, [[[1.0, -1.0]]])
    state = opt.state_dict()
    assert {"optimizer", "step", "lr", "weight_decay", "beta1", "beta2", "eps",
            "0.weight.exp_avg", "0.weight.exp_avg_sq", "0.weight.step"} == set(state)
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert state["step"].shape == () and int(state["step"]) == 1
    saved = {k: v.copy() for k, v in state.items()}
    # neither the dict handed out nor the one loaded may share memory with the optimizer
    run(opt, params, [[[1.0, -1.0]]])
    opt.load_state_dict(state)
    run(opt, params, [[[1.0, -1.0]]])
    for key in saved:
        np.testing.assert_array_equal(state[key], saved[key])


@pytest.mark.parametrize("mutate, match", [
    (lambda s: s.pop("0.weight.momentum_buffer"), "'0.weight.momentum_buffer'"),
    (lambda s: s.__setitem__("0.weight.momentum_buffer", np.zeros(3)),
     "'0.weight.momentum_buffer' is float64\\[3\\]"),
    (lambda s: s.pop("step"), "'step'"),
    (lambda s: s.__setitem__("optimizer", np.array("adam")), "for 'adam', not 'sgd'"),
])
def test_load_state_dict_errors(backend, mutate, match):
    params = make_params(backend, [[1.0, 2.0]])
    opt = make_optimizer("momentum", params, backend, lr=0.1)
    run(opt, params, [[[1.0, -1.0]]])
    state = opt.state_dict()
    mutate(state)
    fresh = make_optimizer("sgd", params, backend, lr=0.2)
    with pytest.raises(CheckpointError, match=match) as info:
        fresh.load_state_dict(state)
    assert "\n" not in str(info.value)
    # a failed load changes nothing
    assert (fresh.lr, fresh.momentum, fresh.step_count, fresh.state) == (0.2, 0.0, 0,
                                                                          {"0.weight": {}})


def test_adam_load_needs_each_parameter_step(backend):
    params = make_params(backend, [[1.0]])
    state = make_optimizer("adam", params, backend, lr=0.1).state_dict()
    del state["0.weight.step"]
    with pytest.raises(CheckpointError, match="'0.weight.step'"):
        make_optimizer("adam", params, backend, lr=0.1).load_state_dict(state)


# ----------------------------------------------------------------------- errors
@pytest.mark.parametrize("call, match", [
    (lambda p, b: make_optimizer("rmsprop", p, b, lr=0.1),
     "unknown optimizer 'rmsprop'; choose one of: sgd, momentum, nesterov, adam"),
    (lambda p, b: make_optimizer("sgd", p, b, lr=0.0), "learning rate must be a number > 0"),
    (lambda p, b: make_optimizer("adam", p, b, lr=float("nan")), "learning rate"),
    (lambda p, b: make_optimizer("sgd", p, b, lr=0.1, weight_decay=-1e-4), "weight decay"),
    (lambda p, b: make_optimizer("adam", p, b, lr=0.1, momentum=0.9),
     "optimizer 'adam' has no option 'momentum'; its options are: betas, eps"),
    (lambda p, b: make_optimizer("momentum", p, b, lr=0.1, momentum=1.0), "momentum must be in"),
    (lambda p, b: SGD(p, b, lr=0.1, nesterov=True), "Nesterov momentum needs momentum > 0"),
    (lambda p, b: Adam(p, b, betas=(0.9, 1.5)), "beta2 must be in"),
    (lambda p, b: Adam(p, b, eps=0.0), "eps must be > 0"),
])
def test_config_errors(call, match):
    backend = get_backend("numpy")
    with pytest.raises(ConfigError, match=match):
        call(make_params(backend, [[1.0]]), backend)


# -------------------------------------------------------------------- schedules
def test_names_are_all_buildable():
    for name in SCHEDULES:
        assert make_schedule(name, 0.1, 20, steps_per_epoch=5)(0) > 0
    params = make_params(get_backend("numpy"), [[1.0]])
    for name in OPTIMIZERS:
        assert make_optimizer(name, params, "numpy", lr=0.1).lr == 0.1


def test_constant_and_step():
    assert {make_schedule("constant", 0.1, 10)(k) for k in range(12)} == {0.1}
    # default: halve every 3 epochs
    step = make_schedule("step", 0.1, 100, steps_per_epoch=10)
    assert [step(k) for k in (0, 29, 30, 59, 60)] == [0.1, 0.1, 0.05, 0.05, 0.025]
    step = make_schedule("step", 1.0, 100, steps_per_epoch=4, step_size=1, gamma=0.1)
    assert [step(k) for k in (3, 4, 8)] == pytest.approx([1.0, 0.1, 0.01], rel=1e-15)


def test_cosine_shape():
    total = 50
    cos = make_schedule("cosine", 0.1, total)
    lrs = [cos(k) for k in range(total)]
    assert lrs[0] == 0.1 and 0 < lrs[-1] < 1e-3
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert cos(total) == cos(total + 10) == 0.0
    warm = make_schedule("cosine", 0.1, total, warmup_steps=5, min_lr=0.001)
    lrs = [warm(k) for k in range(total + 3)]
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1], rel=1e-15)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[-1] == pytest.approx(0.001, rel=1e-15)


def test_onecycle_shape():
    total = 100
    one = make_schedule("onecycle", 0.1, total)
    lrs = [one(k) for k in range(total)]
    peak = int(np.argmax(lrs))
    assert lrs[0] == pytest.approx(0.1 / 25, rel=1e-15)
    assert peak == 29 and lrs[peak] == pytest.approx(0.1, rel=1e-15)
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))
    assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1:]))
    assert lrs[-1] == pytest.approx(0.1 / 25 / 1e4, rel=1e-12)
    assert one(total + 5) == lrs[-1]
    for short in (1, 2, 3, 4):  # debug runs: no division by zero, all rates positive
        assert all(0 < make_schedule("onecycle", 0.1, short)(k) <= 0.1 for k in range(short))


@pytest.mark.parametrize("call, match", [
    (lambda: make_schedule("linear", 0.1, 10), "unknown schedule 'linear'; choose one of: "
                                               "constant, step, cosine, onecycle"),
    (lambda: make_schedule("step", 0.1, 10), "needs steps_per_epoch"),
    (lambda: make_schedule("cosine", 0.1, 10, warmup_steps=10), "warmup_steps"),
    (lambda: make_schedule("cosine", 0.1, 0), "total_steps >= 1"),
    (lambda: make_schedule("onecycle", -0.1, 10), "learning rate"),
    (lambda: make_schedule("onecycle", 0.1, 10, pct_start=1.2), "pct_start"),
    (lambda: make_schedule("constant", 0.1, 10, gamma=0.5),
     "schedule 'constant' has no option 'gamma'; its options are: none"),
])
def test_schedule_errors(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


def _torch_lrs(torch, make_scheduler, lr, steps):
    """The rate PyTorch uses for each of ``steps`` updates."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.torch
@pytest.mark.parametrize("total", [7, 100, 1000])
def test_schedules_match_torch(torch, total):
    S = torch.optim.lr_scheduler
    one = make_schedule("onecycle", 0.2, total)
    ref = _torch_lrs(torch, lambda o: S.OneCycleLR(o, max_lr=0.2, total_steps=total,
                                                   cycle_momentum=False), 0.2, total)
    np.testing.assert_allclose([one(k) for k in range(total)], ref, rtol=1e-12)
    cos = make_schedule("cosine", 0.2, total, min_lr=1e-3)
    ref = _torch_lrs(torch, lambda o: S.CosineAnnealingLR(o, T_max=total, eta_min=1e-3),
                     0.2, total)
    # PyTorch updates the rate recursively, so it drifts by a few ulps per step
    np.testing.assert_allclose([cos(k) for k in range(total)], ref, rtol=1e-9)
    step = make_schedule("step", 0.2, total, steps_per_epoch=1, step_size=2, gamma=0.3)
    ref = _torch_lrs(torch, lambda o: S.StepLR(o, step_size=2, gamma=0.3), 0.2, total)
    np.testing.assert_allclose([step(k) for k in range(total)], ref, rtol=1e-12)


# ------------------------------------------------------ the flat parameter buffer
@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_one_pass_over_a_models_buffer_equals_one_over_a_buffer_it_makes(backend, kind):
    """A model's parameters live in one ParameterBuffer, and the optimizer updates them in
    one pass (reading the step's scalars from a device array); for loose parameters it
    makes a buffer of its own: bit for bit the same updates, with the same checkpoint
    names and shapes."""
    from fastlenet.nn import Parameter, build_model

    model = build_model("lenet5", backend, seed=1)
    loose = [Parameter(backend.asarray(np.array(backend.to_numpy(p.data))), name=p.name)
             for p in model.parameters()]
    flat_opt = make_optimizer(kind, model.parameters(), backend, lr=3e-3, weight_decay=0.01)
    loose_opt = make_optimizer(kind, loose, backend, lr=3e-3, weight_decay=0.01)
    assert flat_opt.buffer is model.parameter_buffer
    assert loose_opt.buffer is not model.parameter_buffer and loose_opt.buffer.params == loose
    rng = np.random.default_rng(2)
    for step in range(4):
        for a, b in zip(model.parameters(), loose):
            g = rng.standard_normal(a.shape).astype(np.float32)
            a.grad, b.grad = backend.asarray(g), backend.asarray(g.copy())
        flat_opt.lr = loose_opt.lr = 3e-3 / (step + 1)
        flat_opt.step()
        loose_opt.step()
        # one slice: every parameter, the gaps between them included
        assert flat_opt.segments == loose_opt.segments == ((0, model.parameter_buffer.size),)
    for a, b in zip(model.parameters(), loose):
        np.testing.assert_array_equal(backend.to_numpy(a.data), backend.to_numpy(b.data))
    flat_state, loose_state = flat_opt.state_dict(), loose_opt.state_dict()
    assert flat_state.keys() == loose_state.keys()
    for key, value in loose_state.items():
        np.testing.assert_array_equal(flat_state[key], value, err_msg=key)
    # every parameter is a view of the buffer, and the optimizer gathered its gradient
    # into its flat array laid out alike; the gaps between them stay zero in both
    data = backend.to_numpy(model.parameter_buffer.data)
    grad = backend.to_numpy(flat_opt.grad)
    inside = np.zeros(data.shape, bool)
    buffer = model.parameter_buffer
    for offset, p in zip(buffer.offsets, model.parameters()):
        inside[offset:offset + p.data.size] = True
        # on the device, not through to_numpy (a copy there)
        assert backend.xp.shares_memory(p.data, buffer.data[offset:offset + p.data.size])
        np.testing.assert_array_equal(grad[offset:offset + p.data.size],
                                      backend.to_numpy(p.grad).reshape(-1))
    assert not data[~inside].any() and not grad[~inside].any()


@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_load_state_dict_fills_the_slots_in_place(backend, kind):
    """A recorded step (a CUDA graph) holds the optimizer's slot arrays: loading a state
    must write into them, not replace them."""
    from fastlenet.nn import build_model

    model = build_model("lenet5", backend)
    opt = make_optimizer(kind, model.parameters(), backend, lr=1e-3)
    for p in model.parameters():
        p.grad = backend.xp.ones_like(p.data)
    opt.step()
    saved = opt.state_dict()
    before = {(pname, slot): array for pname, slots in opt.state.items() for slot, array in slots.items()}
    flat_before = dict(opt.flat_state)
    fresh = make_optimizer(kind, model.parameters(), backend, lr=1e-3)
    opt.load_state_dict(fresh.state_dict())  # zeros
    opt.load_state_dict(saved)
    for (pname, slot), array in before.items():
        assert opt.state[pname][slot] is array
        np.testing.assert_array_equal(backend.to_numpy(array), saved[f"{pname}.{slot}"])
    assert all(opt.flat_state[slot] is array for slot, array in flat_before.items())


def test_slices_split_where_a_parameter_is_skipped_or_counted_apart(backend):
    """Neighbouring parameters updated alike form one slice of the flat arrays; one
    without a gradient splits it, and so, for Adam, does one whose update count differs
    (each slice reads its own bias corrections)."""
    params = make_params(backend, [[1.0, 2.0], [3.0], [4.0, 5.0, 6.0]])
    opt = make_optimizer("adam", params, backend, lr=0.1)
    (a, _), (b, _), (c, end) = (opt.buffer.extent(p) for p in params)
    run(opt, params, [[[1.0, 1.0], [1.0], [1.0, 1.0, 1.0]]])
    assert opt.segments == ((a, end),)
    run(opt, params, [[[1.0, 1.0], None, [1.0, 1.0, 1.0]]])
    assert opt.segments == ((a, b), (c, end))
    run(opt, params, [[[1.0, 1.0], [1.0], [1.0, 1.0, 1.0]]])  # counts 3, 2, 3
    assert opt.segments == ((a, b), (b, c), (c, end))
    sgd = make_optimizer("momentum", params, backend, lr=0.1)  # no per-parameter counts
    run(sgd, params, [[[1.0, 1.0], [1.0], [1.0, 1.0, 1.0]]])
    assert sgd.segments == ((a, end),)


def test_parameters_of_two_dtypes_cannot_share_an_optimizer(backend):
    mix = make_params(backend, [[1.0]], np.float32) + make_params(backend, [[1.0], [2.0]])[1:]
    with pytest.raises(ConfigError, match="share one dtype, got float32, float64") as info:
        make_optimizer("adam", mix, backend, lr=0.1)
    assert "\n" not in str(info.value)


def test_two_models_cannot_share_an_optimizer(backend):
    """Their parameters have the same names, under which the state would be kept once."""
    from fastlenet.nn import build_model

    params = [p for seed in (0, 1) for p in build_model("lenet5", backend, seed=seed).parameters()]
    with pytest.raises(ConfigError, match="distinct names, and 10 are taken twice "
                       r"\(e.g. '0.bias'") as info:
        make_optimizer("adam", params, backend, lr=0.1)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_one_optimizer_over_a_model_and_loose_parameters_equals_one_each(backend, kind):
    """A model's parameters and parameters of their own go into a buffer the optimizer
    makes; its steps are those of one optimizer each, to the bit, and the model keeps
    seeing its parameters' new values."""
    from fastlenet.nn import build_model

    rng = np.random.default_rng(4)
    joint, apart = build_model("lenet5", backend), build_model("lenet5", backend)
    loose, alone = (make_params(backend, [[1.0, 2.0], [3.0]], np.float32) for _ in range(2))
    for p in loose + alone:
        p.name = "extra." + p.name
    both = make_optimizer(kind, joint.parameters() + loose, backend, lr=0.01)
    each = [make_optimizer(kind, ps, backend, lr=0.01) for ps in (apart.parameters(), alone)]
    pairs = list(zip(joint.parameters() + loose, apart.parameters() + alone))
    for _ in range(3):
        for p, q in pairs:
            g = rng.standard_normal(p.data.shape).astype(np.float32)
            p.grad, q.grad = backend.asarray(g), backend.asarray(g.copy())
        for opt in (both, *each):
            opt.step()
    for p, q in pairs:
        np.testing.assert_array_equal(backend.to_numpy(p.data), backend.to_numpy(q.data))
    x = backend.asarray(rng.standard_normal((1, 32, 32, 2)).astype(np.float32))
    np.testing.assert_array_equal(backend.to_numpy(joint.forward(x)),
                                  backend.to_numpy(apart.forward(x)))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_bare_layers_unnamed_parameters_train(backend, name):
    """Parameters outside a model have no names; their state goes by position, and a
    step equals one over the same values named."""
    from fastlenet.nn import Conv2d

    layers = [Conv2d(1, 2, 3).bind(backend, np.float32, np.random.default_rng(0), None)
              for _ in range(2)]
    bare = layers[0].parameters()
    named = layers[1].parameters()
    for i, p in enumerate(named):
        p.name = str(i)
    opts = [make_optimizer(name, ps, backend, lr=0.1) for ps in (bare, named)]
    rng = np.random.default_rng(1)
    for _ in range(2):
        for p, q in zip(bare, named):
            g = rng.standard_normal(p.data.shape).astype(np.float32)
            p.grad, q.grad = backend.asarray(g), backend.asarray(g.copy())
        for opt in opts:
            opt.step()
    for p, q in zip(bare, named):
        np.testing.assert_array_equal(backend.to_numpy(p.data), backend.to_numpy(q.data))
    assert sorted(opts[0].state_dict()) == sorted(opts[1].state_dict())


def test_a_gradient_assigned_between_the_halves_of_a_step_is_one_line(backend):
    """prepare_step() picks the parameters that have a gradient; one assigned before
    update() would be left out silently, so update() says to pass every_grad."""
    from fastlenet.errors import FastLeNetError

    params = make_params(backend, [[1.0, 2.0]])
    opt = make_optimizer("sgd", params, backend, lr=0.1)
    opt.prepare_step()
    params[0].grad = backend.asarray(np.array([1.0, 1.0]))
    with pytest.raises(FastLeNetError, match="0.weight got its gradient after prepare_step") as info:
        opt.update()
    assert "\n" not in str(info.value)
    opt.prepare_step(every_grad=True)
    opt.update()
    np.testing.assert_allclose(backend.to_numpy(params[0].data), [0.9, 1.9])


def test_an_update_without_the_gradient_it_was_prepared_for_is_one_line(backend):
    from fastlenet.errors import FastLeNetError

    params = make_params(backend, [[1.0, 2.0]])
    opt = make_optimizer("sgd", params, backend, lr=0.1)
    opt.prepare_step(every_grad=True)  # as a training step does, before its backward
    with pytest.raises(FastLeNetError, match="0.weight has no gradient") as info:
        opt.update()
    assert "\n" not in str(info.value)
