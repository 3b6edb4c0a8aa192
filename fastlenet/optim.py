"""Optimizers (SGD, momentum, Nesterov, Adam) and learning-rate schedules.

An optimizer updates each ``Parameter.data`` in place from its ``Parameter.grad``
(same shape, set by the model's backward). It is written against ``backend.xp`` only,
so one code path serves every backend; Adam's update is the backend's
``adam_update_device`` (the reference backend's defines it; the others fuse it).

Weight decay is *decoupled* for both optimizers, as in AdamW (Loshchilov & Hutter,
"Decoupled Weight Decay Regularization"): each step shrinks the weights,
``p -= lr * wd * p``, instead of adding ``wd * p`` to the gradient. For plain SGD the two
are the same update; with momentum or Adam they differ, and ``torch.optim.SGD``'s
``weight_decay`` is the coupled kind.

The learning rate is the plain attribute ``optimizer.lr``; the trainer sets it before
each step from a schedule made by :func:`make_schedule`, where ``schedule(k)`` is the
rate of update ``k`` (counting from 0) and depends on nothing else, so a resumed run
gets the same rates by passing the restored step count.

One update path, over flat arrays: the parameters lie in one
:class:`~fastlenet.nn.parameter.ParameterBuffer` (a model's, or any part of it), and the
optimizer's slots (momentum, Adam's moments) and the gradients it gathers are flat arrays
laid out alike. Parameters in no buffer or in several (a model's and some of their own)
are first moved into a buffer the optimizer makes, so their ``data`` becomes a view of
it. They need one dtype, and distinct names (unnamed ones go by their position).

A step has a host half and a device half, ``step() = prepare_step(); update()``:
``prepare_step`` counts the step, picks the parameters it updates (those with a
gradient) and writes the step's scalars (the learning rate, Adam's bias corrections) into
a small device array; ``update`` gathers the gradients and updates each slice of
neighbouring parameters in one pass that reads those scalars from the device. A backend
can therefore record ``update`` inside a training step and replay it while the scalars
change, as PyTorch's capturable Adam does.

Checkpoints: ``state_dict()`` returns host ``numpy`` copies keyed by
``"<param name>.<slot>"`` (e.g. ``"0.weight.momentum_buffer"``, ``"0.weight.exp_avg"``)
plus 0-d arrays ``"optimizer"`` (the class), ``"step"`` and the hyper-parameters;
``load_state_dict`` restores all of it, so the loaded optimizer continues exactly
(bitwise) as the saved one would have.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Hashable, Iterable, Mapping

import numpy as np

from .backends import Backend, get_backend
from .backends.base import adam_factors
from .checks import is_real
from .errors import CheckpointError, ConfigError, FastLeNetError
from .nn.parameter import ParameterBuffer


# ------------------------------------------------------------------ validation
def _check_lr(lr: float) -> float:
    if not (is_real(lr) and lr > 0):
        raise ConfigError(f"learning rate must be a number > 0 (got {lr!r}); "
                          "pass a positive --lr")
    return float(lr)


def _check_weight_decay(weight_decay: float) -> float:
    if not (is_real(weight_decay) and weight_decay >= 0):
        raise ConfigError(f"weight decay must be a number >= 0 (got {weight_decay!r}); "
                          "pass 0 to disable it")
    return float(weight_decay)


def _check_unit(what: str, value: float) -> float:
    """A decay rate: a number in [0, 1)."""
    if not (is_real(value) and 0 <= value < 1):
        raise ConfigError(f"{what} must be in [0, 1) (got {value!r})")
    return float(value)


def _scalar(state: Mapping, key: str):
    """The Python value of the 0-d entry ``key`` of a state dict."""
    if key not in state:
        raise CheckpointError(f"optimizer state has no '{key}'; the checkpoint is "
                              "incomplete or from another optimizer; start the run afresh")
    value = np.asarray(state[key])
    if value.shape != ():
        raise CheckpointError(f"optimizer state '{key}' should be a scalar, has shape "
                              f"{value.shape}; the checkpoint is corrupt")
    return value.item()


# ------------------------------------------------------------------ optimizers
def _state_names(params: list) -> list[str]:
    """The name each parameter's state is kept under: its own (a model's ``"0.weight"``),
    or its position for an unnamed one. ConfigError when two share one, as two models'
    parameters do: their state would be one."""
    names = [p.name or str(i) for i, p in enumerate(params)]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"an optimizer's parameters need distinct names, and "
                          f"{len(twice)} are taken twice (e.g. '{twice[0]}', as in two "
                          "models' parameters); give each model its own optimizer")
    return names


def _buffer_of(params: list, backend: Backend) -> ParameterBuffer:
    """The ParameterBuffer the parameters lie in (a model's, or a part of it); for
    parameters in none or in several, a new one that takes them in. ConfigError for
    parameters of two dtypes, which no flat array holds."""
    buffer = ParameterBuffer.of(params)
    if buffer is not None:
        return buffer
    dtypes = sorted({np.dtype(p.data.dtype).name for p in params})
    if len(dtypes) > 1:
        raise ConfigError(f"an optimizer's parameters must share one dtype, got "
                          f"{', '.join(dtypes)}; give each dtype its own optimizer")
    return ParameterBuffer(params, backend, dtypes[0] if dtypes else np.float32)


class Optimizer:
    """Base class: the parameters, ``lr``, ``weight_decay``, ``step_count`` and slots.

    ``flat_state[slot]`` is a flat device array laid out like the parameters' buffer (a
    momentum buffer, Adam's moments) and ``state[name][slot]`` a parameter's view of it,
    under its name in ``names``; ``grad`` is the flat array the gradients are gathered into. ``segments`` are
    the ``(start, end)`` slices of the flat arrays this step updates, each reading its
    scalars from one row of a small device array. Subclasses name their slots,
    hyper-parameters and per-step scalars, and write :meth:`_update_slice`.
    """

    kind: str = ""
    # extra hyper-parameters saved in the state dict: attribute name -> type
    _hyper: dict[str, type] = {}
    # how many per-step scalars a slice's update reads from the device
    _scalar_count: int = 0

    def __init__(self, params: Iterable, backend: str | Backend, lr: float,
                 weight_decay: float) -> None:
        self.params = list(params)
        self.backend = get_backend(backend)
        self.lr = _check_lr(lr)
        self.weight_decay = _check_weight_decay(weight_decay)
        self.step_count = 0
        self.names = _state_names(self.params)
        self.buffer = _buffer_of(self.params, self.backend)
        self.state, self.flat_state = self._zero_slots(self._slot_names(self.hyper_parameters()))
        self.grad = self.buffer.zeros()
        self._grads = [self.buffer.view(self.grad, p) for p in self.params]
        extents = [self.buffer.extent(p) for p in self.params]
        # the parameters in buffer order, with their extents: neighbours merge into a slice
        self._order = sorted(((i, *extents[i]) for i in range(len(self.params))),
                             key=lambda entry: entry[1])
        # one row of per-step scalars per slice, in the parameters' dtype
        self._scalars = self.backend.xp.zeros((max(len(self.params), 1), self._scalar_count),
                                              dtype=self.buffer.dtype)
        self.segments: tuple[tuple[int, int], ...] = ()
        self._updating: list[int] = []  # indices of the parameters this step updates
        self._seen: list | None = None

    def hyper_parameters(self) -> dict:
        """The learning rate, weight decay and the subclass's hyper-parameters, by name."""
        return {name: getattr(self, name) for name in ("lr", "weight_decay", *self._hyper)}

    def _slot_names(self, hyper: Mapping) -> tuple[str, ...]:
        """The per-parameter slots these hyper-parameters need."""
        raise NotImplementedError

    def _zero_slots(self, slots: tuple[str, ...]) -> tuple[dict, dict]:
        """Zero slots: (per-parameter views by name and slot, flat arrays by slot)."""
        flat = {s: self.buffer.zeros() for s in slots}
        return {name: {s: self.buffer.view(flat[s], p) for s in slots}
                for name, p in zip(self.names, self.params)}, flat

    def _step_keys(self, updating: list[int]) -> list[Hashable]:
        """Count this step for the parameters ``updating`` (indices) and return, for each,
        a key: parameters with equal keys share the step's scalars."""
        return [None] * len(updating)

    def _step_scalars(self, key: Hashable) -> tuple[float, ...]:
        """The host scalars of this step for parameters of ``key``."""
        raise NotImplementedError

    def _update_slice(self, p, g, slots: dict, scalars) -> None:
        """Update the flat slice ``p`` (and its ``slots``) from ``g`` in place, reading the
        step's scalars from the device row ``scalars``."""
        raise NotImplementedError

    def step(self) -> None:
        """One update of every parameter that has a gradient (``grad`` None: skipped)."""
        self.prepare_step()
        self.update()

    def prepare_step(self, every_grad: bool = False) -> None:
        """The host's half of a step: count it, pick the parameters it updates and write
        their scalars (from ``lr`` and the step counts) to the device for :meth:`update`.

        It updates the parameters that have a gradient now, or with ``every_grad`` all of
        them: pass it when the backward that assigns the gradients runs between this and
        :meth:`update`, as in a training step.
        """
        self.step_count += 1
        self._updating = [i for i, p in enumerate(self.params) if every_grad or p.grad is not None]
        # the gradients seen now, so that update() can tell one assigned since
        self._seen = None if every_grad else [p.grad for p in self.params]
        keys = dict(zip(self._updating, self._step_keys(self._updating)))
        segments, segment_keys = [], []
        for i, start, end in self._order:
            if i not in keys:
                continue
            if segments and segments[-1][1] == start and segment_keys[-1] == keys[i]:
                segments[-1] = (segments[-1][0], end)
            else:
                segments.append((start, end))
                segment_keys.append(keys[i])
        self.segments = tuple(segments)
        for row, key in enumerate(segment_keys):
            self.backend.set_scalars(self._scalars[row], self._step_scalars(key))

    def update(self) -> None:
        """The device's half: gather the gradients and update every slice picked by
        :meth:`prepare_step`. It reads nothing from the host that changes between steps,
        so a backend may record it (fastlenet.step_signature names what it bakes in)."""
        for i in self._updating:
            p = self.params[i]
            if p.grad is None:
                raise FastLeNetError(f"parameter {self.names[i]} has no gradient to update "
                                     "with; a layer's backward must assign every Parameter.grad")
            self._grads[i][...] = p.grad
        if self._seen is not None:
            late = [self.names[i] for i, p in enumerate(self.params)
                    if p.grad is not None and p.grad is not self._seen[i]
                    and i not in self._updating]
            if late:
                raise FastLeNetError(f"parameter {late[0]} got its gradient after prepare_step(), "
                                     "which left it out of this update; call "
                                     "prepare_step(every_grad=True) when the backward runs "
                                     "between the two")
        data, grad = self.buffer.data, self.grad
        for row, (start, end) in enumerate(self.segments):
            self._update_slice(data[start:end], grad[start:end],
                               {s: a[start:end] for s, a in self.flat_state.items()},
                               self._scalars[row])

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of everything :meth:`load_state_dict` needs to continue exactly."""
        out = {"optimizer": np.array(self.kind),
               "step": np.array(self.step_count, dtype=np.int64)}
        for name, value in self.hyper_parameters().items():
            out[name] = np.array(value)
        for pname, slots in self.state.items():
            for slot, array in slots.items():
                # np.array copies: the numpy backend's to_numpy returns the live array
                out[f"{pname}.{slot}"] = np.array(self.backend.to_numpy(array))
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore step count, hyper-parameters and slots saved by :meth:`state_dict`.

        The checkpoint's hyper-parameters win over the ones this optimizer was built
        with, so resuming continues the saved run. Everything is checked before anything
        is assigned: on CheckpointError the optimizer is unchanged.
        """
        kind = _scalar(state, "optimizer")
        if kind != self.kind:
            raise CheckpointError(f"optimizer state is for '{kind}', not '{self.kind}'; "
                                  f"resume with the optimizer the checkpoint was made with")
        step = int(_scalar(state, "step"))
        hyper = {name: convert(_scalar(state, name))
                 for name, convert in {"lr": float, "weight_decay": float, **self._hyper}.items()}
        slot_names = self._slot_names(hyper)
        host = {}
        for name, p in zip(self.names, self.params):
            for slot in slot_names:
                key = f"{name}.{slot}"
                if key not in state:
                    raise CheckpointError(f"optimizer state has no '{key}'; the checkpoint "
                                          "belongs to another model or optimizer")
                array = np.asarray(state[key])
                if array.shape != p.data.shape or array.dtype.kind != "f":
                    raise CheckpointError(
                        f"optimizer state '{key}' is {array.dtype}{list(array.shape)}, the "
                        f"parameter is {p.data.dtype}{list(p.data.shape)}; the checkpoint belongs "
                        "to another model")
                host[key] = array
        if set(self.flat_state) != set(slot_names):
            self.state, self.flat_state = self._zero_slots(slot_names)
        # else the same arrays are filled, in place: a recorded step (a CUDA graph) holds them
        for pname, slots in self.state.items():
            for slot, device in slots.items():
                # copy into arrays the optimizer owns: asarray may alias the caller's dict
                device[...] = self.backend.asarray(host[f"{pname}.{slot}"])
        self.step_count = step
        for name, value in hyper.items():
            setattr(self, name, value)


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum.

    Momentum follows PyTorch (lr multiplies the buffer; no dampening)::

        p   -= lr * wd * p                 decoupled weight decay
        buf  = mu * buf + g                (buffer starts at 0, so step 1 gives buf = g)
        d    = g + mu * buf   if nesterov
               buf            if mu > 0
               g              otherwise
        p   -= lr * d
    """

    kind = "sgd"
    _hyper = {"momentum": float, "nesterov": bool}
    _scalar_count = 2  # lr, 1 - lr * wd

    def __init__(self, params: Iterable, backend: str | Backend, lr: float,
                 momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
        self.momentum = _check_unit("momentum", momentum)
        if nesterov and not self.momentum:
            raise ConfigError("Nesterov momentum needs momentum > 0; set a momentum "
                              "such as 0.9 or use plain 'sgd'")
        self.nesterov = bool(nesterov)
        super().__init__(params, backend, lr, weight_decay)

    def _slot_names(self, hyper: Mapping) -> tuple[str, ...]:
        return ("momentum_buffer",) if hyper["momentum"] else ()

    def _step_scalars(self, key) -> tuple[float, float]:
        return self.lr, 1.0 - self.lr * self.weight_decay

    def _update_slice(self, p, g, slots: dict, scalars) -> None:
        # 0-d views (not scalars copied out): a recorded step reads them anew each replay
        self._apply(p, g, slots.get("momentum_buffer"), scalars[0, ...], scalars[1, ...])

    def _apply(self, p, g, buf, lr, decay) -> None:
        """The update of p from g (and the momentum buffer), with lr and decay = 1 - lr*wd
        0-d device values of p's dtype."""
        if self.momentum:
            buf *= self.momentum
            buf += g
            g = g + self.momentum * buf if self.nesterov else buf
        if self.weight_decay:
            p *= decay
        p -= lr * g


class Adam(Optimizer):
    """Adam with bias correction and decoupled weight decay (AdamW).

    The update is ``backend.adam_update_device``::

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        p -= lr * wd * p
        p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    ``t`` counts the updates of each parameter (as in PyTorch), so a parameter whose
    grad was None on some steps still gets correctly bias-corrected moments: parameters
    whose counts differ are updated in separate slices, each with its own factors.
    """

    kind = "adam"
    _hyper = {"beta1": float, "beta2": float, "eps": float}
    _scalar_count = 3  # decay, step_size, bias2 (backends.base.adam_factors)

    def __init__(self, params: Iterable, backend: str | Backend, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        self.beta1 = _check_unit("beta1", betas[0])
        self.beta2 = _check_unit("beta2", betas[1])
        if not (is_real(eps) and eps > 0):
            raise ConfigError(f"Adam's eps must be > 0 (got {eps!r})")
        self.eps = float(eps)
        super().__init__(params, backend, lr, weight_decay)
        self.param_steps = {name: 0 for name in self.names}

    def _slot_names(self, hyper: Mapping) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _step_keys(self, updating: list[int]) -> list[int]:
        names = [self.names[i] for i in updating]
        for name in names:
            self.param_steps[name] += 1
        return [self.param_steps[name] for name in names]

    def _step_scalars(self, key: int) -> tuple[float, float, float]:
        return adam_factors(self.lr, self.beta1, self.beta2, self.weight_decay, key)

    def _update_slice(self, p, g, slots: dict, scalars) -> None:
        self.backend.adam_update_device(
            p, g, slots["exp_avg"], slots["exp_avg_sq"], scalars, beta1=self.beta1,
            beta2=self.beta2, eps=self.eps, weight_decay=self.weight_decay)

    def state_dict(self) -> dict[str, np.ndarray]:
        out = super().state_dict()
        for pname, t in self.param_steps.items():
            out[f"{pname}.step"] = np.array(t, dtype=np.int64)
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        # read the steps first so that a missing one leaves the optimizer unchanged
        steps = {name: int(_scalar(state, f"{name}.step")) for name in self.names}
        super().load_state_dict(state)
        self.param_steps = steps


# name -> (class, defaults that make the name mean what it says)
_OPTIMIZER_TABLE: dict[str, tuple[type[Optimizer], dict]] = {
    "sgd": (SGD, {}),
    "momentum": (SGD, {"momentum": 0.9}),
    "nesterov": (SGD, {"momentum": 0.9, "nesterov": True}),
    "adam": (Adam, {}),
}


OPTIMIZERS: tuple[str, ...] = tuple(_OPTIMIZER_TABLE)


def make_optimizer(name: str, params: Iterable, backend: str | Backend, lr: float,
                   weight_decay: float = 0.0, **kw) -> Optimizer:
    """The optimizer called ``name`` (one of :data:`OPTIMIZERS`).

    ``kw`` overrides the class's other options: ``momentum``/``nesterov`` for the SGD
    family (``momentum`` and ``nesterov`` default to momentum 0.9), ``betas``/``eps``
    for Adam. Bad names or values raise ConfigError.
    """
    if name not in _OPTIMIZER_TABLE:
        raise ConfigError(f"unknown optimizer '{name}'; choose one of: {', '.join(OPTIMIZERS)}")
    cls, defaults = _OPTIMIZER_TABLE[name]
    allowed = set(inspect.signature(cls).parameters) - {"params", "backend", "lr",
                                                        "weight_decay"}
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise ConfigError(f"optimizer '{name}' has no option '{unknown[0]}'; "
                          f"its options are: {', '.join(sorted(allowed))}")
    return cls(params, backend, lr=lr, weight_decay=weight_decay, **{**defaults, **kw})


# ------------------------------------------------------------------- schedules
def _cos_anneal(start: float, end: float, pct: float) -> float:
    """From ``start`` (pct 0) to ``end`` (pct 1) along half a cosine."""
    return end + (start - end) * (1.0 + math.cos(math.pi * pct)) / 2.0


def _constant(base_lr, total_steps, steps_per_epoch):
    """lr = base_lr."""
    return lambda step: base_lr


def _step(base_lr, total_steps, steps_per_epoch, step_size: int = 3, gamma: float = 0.5):
    """lr = base_lr * gamma ** (epoch // step_size), epoch = step // steps_per_epoch.

    The default, halving every 3 epochs, is close to LeCun et al. (1998)'s hand-made
    LeNet-5 schedule (the rate roughly halved every 2 to 4 passes).
    """
    if steps_per_epoch is None or steps_per_epoch < 1:
        raise ConfigError("the 'step' schedule counts epochs and needs steps_per_epoch >= 1; "
                          "pass the number of batches per epoch")
    if not (isinstance(step_size, int) and step_size >= 1):
        raise ConfigError(f"step_size must be a whole number of epochs >= 1 (got {step_size!r})")
    if not (is_real(gamma) and 0 < gamma <= 1):
        raise ConfigError(f"gamma must be in (0, 1] (got {gamma!r})")
    period = step_size * steps_per_epoch
    return lambda step: base_lr * gamma ** (step // period)


def _cosine(base_lr, total_steps, steps_per_epoch, warmup_steps: int = 0,
            min_lr: float = 0.0):
    """Optional linear warm-up, then cosine annealing (Loshchilov & Hutter, SGDR)::

        step < W:  lr = base_lr * (step + 1) / W
        else:      lr = min_lr + (base_lr - min_lr) (1 + cos(pi t)) / 2,
                   t = min(step - W, T - W) / (T - W)

    With W = 0 this is PyTorch's CosineAnnealingLR(T_max=T, eta_min=min_lr); past the
    end it stays at min_lr instead of rising again.
    """
    if not (isinstance(warmup_steps, int) and 0 <= warmup_steps < total_steps):
        raise ConfigError(f"warmup_steps must be a whole number in [0, {total_steps}) "
                          f"(got {warmup_steps!r})")
    if not (is_real(min_lr) and 0 <= min_lr < base_lr):
        raise ConfigError(f"min_lr must be in [0, {base_lr}) (got {min_lr!r})")
    span = total_steps - warmup_steps

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return base_lr * (step + 1) / warmup_steps
        return _cos_anneal(base_lr, min_lr, min(step - warmup_steps, span) / span)
    return lr_at


def _onecycle(base_lr, total_steps, steps_per_epoch, pct_start: float = 0.3,
              div_factor: float = 25.0, final_div_factor: float = 1e4):
    """Smith's one-cycle policy, PyTorch OneCycleLR's shape (two phases, cosine)::

        initial = base_lr / div_factor,  final = initial / final_div_factor
        A = pct_start * T - 1,  B = T - 1
        step <= A:  cos-anneal initial -> base_lr,  pct = step / A
        else:       cos-anneal base_lr -> final,    pct = (step - A) / (B - A)

    Only the rate cycles (not momentum). Past the end it stays at ``final``
    (PyTorch raises). When A <= 0 (a run of a few steps) there is no warm-up phase.
    """
    if not (is_real(pct_start) and 0 < pct_start < 1):
        raise ConfigError(f"pct_start must be in (0, 1) (got {pct_start!r})")
    for what, value in (("div_factor", div_factor), ("final_div_factor", final_div_factor)):
        if not (is_real(value) and value >= 1):
            raise ConfigError(f"{what} must be >= 1 (got {value!r})")
    initial = base_lr / div_factor
    final = initial / final_div_factor
    warm_end = float(pct_start * total_steps) - 1
    last = total_steps - 1

    def lr_at(step: int) -> float:
        step = min(step, last)
        if 0 < warm_end and step <= warm_end:
            return _cos_anneal(initial, base_lr, step / warm_end)
        return _cos_anneal(base_lr, final, (step - warm_end) / (last - warm_end))
    return lr_at


_SCHEDULE_TABLE = {"constant": _constant, "step": _step, "cosine": _cosine,
                   "onecycle": _onecycle}
SCHEDULES: tuple[str, ...] = tuple(_SCHEDULE_TABLE)


def make_schedule(name: str, base_lr: float, total_steps: int,
                  steps_per_epoch: int | None = None, **kw) -> Callable[[int], float]:
    """The schedule ``name`` (one of :data:`SCHEDULES`) as ``lr = schedule(step)``.

    ``step`` counts updates from 0; ``total_steps`` is the length of the run;
    ``steps_per_epoch`` is needed by ``step`` (its ``step_size`` is in epochs). ``kw``
    are the schedule's options (see ``_step``, ``_cosine``, ``_onecycle``).
    """
    if name not in _SCHEDULE_TABLE:
        raise ConfigError(f"unknown schedule '{name}'; choose one of: {', '.join(SCHEDULES)}")
    base_lr = _check_lr(base_lr)
    if not (isinstance(total_steps, int) and total_steps >= 1):
        raise ConfigError(f"a schedule needs total_steps >= 1 (got {total_steps!r}); "
                          "train for at least one step")
    build = _SCHEDULE_TABLE[name]
    allowed = list(inspect.signature(build).parameters)[3:]
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise ConfigError(f"schedule '{name}' has no option '{unknown[0]}'; "
                          f"its options are: {', '.join(allowed) or 'none'}")
    return build(base_lr, total_steps, steps_per_epoch, **kw)


__all__ = ["OPTIMIZERS", "SCHEDULES", "Optimizer", "SGD", "Adam", "make_optimizer",
           "make_schedule"]
