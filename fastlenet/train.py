"""The training loop: batches, evaluation, history, checkpoints, early stop, progress.

It knows nothing of any particular backend: data is uploaded to the backend's device
once, each epoch's shuffled order is uploaded as one index array, batches are gathered on
the device, and the host reads losses back only every ``log_every`` steps. A whole step
(batch gather, forward, loss, backward, optimizer update) is one function that the
backend may record and replay (:class:`TrainingStep`, ``Backend.capture_step``: one CUDA
graph replay per step on a GPU backend); the host only writes the step's learning rate
and bias corrections to the device before it.

A run folder holds ``config.json``, ``history.json`` (per step and per epoch),
``metrics.json``, and the checkpoints ``last.npz`` (every epoch) and ``best.npz`` (best
validation accuracy so far). Resuming from ``last.npz`` restores weights, optimizer state
and every RNG, so an interrupted run resumed gives the same result as one never stopped.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .atomic_write import write_json
from .augment import AugmentSettings, Augmenter
from .backends import Backend, get_backend
from .checkpoint import load_checkpoint, save_checkpoint
from .data import DATASETS, load_dataset, prepare
from .checks import is_integer, is_real
from .errors import CheckpointError, ConfigError, TrainingDivergedError
from .evaluation import evaluate
from .nn import DTYPES, MODELS, SoftmaxCrossEntropy, build_model
from .optim import OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule


# The default recipes (batch 128, Adam, one-cycle schedule), one without augmentation and
# one with: augmented images keep teaching for longer. TrainConfig's epochs and lr default
# to one of them. The augmented one was chosen on validation accuracy only (mean over
# seeds 0, 1, 3 and 4 of the last epoch's, on the numba backend; README, Augmentation).
RECIPES = {False: {"epochs": 8, "lr": 5e-3}, True: {"epochs": 40, "lr": 3e-3}}


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved with every checkpoint.

    ``epochs`` and ``lr`` left at None take the default recipe's (RECIPES), which depends
    on ``augment``; :meth:`validate` fills them in.
    """

    model: str = "lenet5"
    backend: str = "auto"
    dataset: str | None = None  # None: "custom" when a data folder is given, else "mnist"
    data_dir: str | None = None
    epochs: int | None = None
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float | None = None
    schedule: str = "onecycle"
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    seed: int = 0
    val_size: int = 5000
    target_accuracy: float | None = None
    dtype: str = "float32"
    train_limit: int | None = None  # use only this many training images (quick runs)
    log_every: int = 20  # host reads the loss every this many steps
    # random transforms of every training batch (fastlenet.augment); 0 turns one off
    augment: bool = False
    augment_shift: float = AugmentSettings.shift
    augment_rotate: float = AugmentSettings.rotate
    augment_scale: float = AugmentSettings.scale
    augment_shear: float = AugmentSettings.shear
    augment_elastic: float = AugmentSettings.elastic
    augment_noise: float = AugmentSettings.noise

    def validate(self) -> "TrainConfig":
        """Fill in the recipe's epochs and lr where None, then raise ConfigError for the
        first out-of-range value; return self."""
        if not isinstance(self.augment, bool):
            raise ConfigError(f"augment must be True or False, got {self.augment!r}")
        for name, value in RECIPES[self.augment].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        integers = ("epochs", "batch_size", "seed", "val_size", "log_every")
        reals = ("lr", "weight_decay", "label_smoothing")
        for name in integers + ("train_limit",):
            value = getattr(self, name)
            if not (is_integer(value) or (name == "train_limit" and value is None)):
                raise ConfigError(f"{option_name(name)} must be an integer, got {value!r}")
        for name in reals + ("target_accuracy",):
            value = getattr(self, name)
            if not (is_real(value) or (name == "target_accuracy" and value is None)):
                raise ConfigError(f"{option_name(name)} must be a finite number, got {value!r}")
        checks = [
            (self.model in MODELS, f"unknown model '{self.model}'; choose one of: {', '.join(MODELS)}"),
            (self.dataset is None or self.dataset in DATASETS, f"unknown dataset '{self.dataset}'; choose one of: {', '.join(DATASETS)}"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer '{self.optimizer}'; choose one of: {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"unknown schedule '{self.schedule}'; choose one of: {', '.join(SCHEDULES)}"),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be a positive number, got {self.lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.label_smoothing <= 1, f"--label-smoothing must be in [0, 1], got {self.label_smoothing}"),
            (self.val_size >= 0, f"--val-size must be >= 0, got {self.val_size}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (self.target_accuracy is None or 0 < self.target_accuracy <= 1,
             f"--target-accuracy is a fraction in (0, 1], e.g. 0.99; got {self.target_accuracy}"),
            (self.target_accuracy is None or self.val_size > 0,
             "--target-accuracy needs a validation split; set --val-size above 0"),
            (self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype}"),
            (self.log_every >= 1, f"log_every must be at least 1, got {self.log_every}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.augment_settings().check(option=option_name)
        return self

    def augment_settings(self) -> AugmentSettings:
        """The ``augment_*`` fields as the augmenter's settings."""
        return AugmentSettings(**{f.name: getattr(self, f"augment_{f.name}")
                                  for f in dataclasses.fields(AugmentSettings)})


def option_name(field: str) -> str:
    """The command-line option of a TrainConfig field (or augment setting), e.g.
    ``"--batch-size"``, for messages and for the sweep's child commands."""
    if field in {f.name for f in dataclasses.fields(AugmentSettings)}:
        field = "augment_" + field
    return "--limit" if field == "train_limit" else "--" + field.replace("_", "-")


def default_run_dir(config: TrainConfig, backend_name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{config.model}-{backend_name}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


class _NoBar:
    """Stands in for tqdm when there is no terminal to draw on, or no tqdm."""

    def update(self, n): pass

    def set_postfix(self, **kw): pass

    def close(self): pass


def _progress_bar(total: int, desc: str, enabled: bool):
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # a declared dependency, but the numpy path runs without it
            return _NoBar()
        return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                    file=sys.stderr)
    return _NoBar()


@dataclass
class TrainingState:
    """What a run carries from epoch to epoch besides the weights and the optimizer's
    moments: progress counters, the best validation accuracy, the history, and every
    random generator (shuffling on the host; dropout and augmentation on the backend).

    :meth:`to_meta` writes it into a checkpoint's meta and :meth:`restore` reads it back,
    so a resumed run continues exactly (bitwise) where the saved one stopped.
    """

    backend: Backend
    shuffle_rng: np.random.Generator
    model_rng: object  # the backend generator Dropout draws from
    augment_rng: object | None = None
    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer updates made
    train_seconds: float = 0.0  # training time so far, evaluation excluded
    best_val_accuracy: float | None = None
    best_epoch: int | None = None
    history: dict = dataclasses.field(default_factory=lambda: {"steps": [], "epochs": []})

    def record_epoch(self, record: dict) -> bool:
        """Append an epoch's record; True when its validation accuracy is the best so far
        (the first epoch with a validation accuracy always is)."""
        self.history["epochs"].append(record)
        val = record["val_accuracy"]
        if val is None or (self.best_val_accuracy is not None and val <= self.best_val_accuracy):
            return False
        self.best_val_accuracy, self.best_epoch = val, record["epoch"]
        return True

    def to_meta(self) -> dict:
        """The state as JSON-serialisable checkpoint fields."""
        backend = self.backend
        return {"epoch": self.epoch, "step": self.step, "train_seconds": self.train_seconds,
                "shuffle_rng": self.shuffle_rng.bit_generator.state,
                "model_rng": backend.rng_state(self.model_rng),
                "augment_rng": (None if self.augment_rng is None
                                else backend.rng_state(self.augment_rng)),
                "best_val_accuracy": self.best_val_accuracy, "best_epoch": self.best_epoch,
                "history": self.history}

    def restore(self, meta: dict) -> None:
        """The inverse of :meth:`to_meta`: KeyError for a missing field, TypeError or
        ValueError for a damaged one."""
        self.shuffle_rng.bit_generator.state = meta["shuffle_rng"]
        self.backend.set_rng_state(self.model_rng, meta["model_rng"])
        if self.augment_rng is not None:
            self.backend.set_rng_state(self.augment_rng, meta["augment_rng"])
        self.epoch, self.step = int(meta["epoch"]), int(meta["step"])
        self.train_seconds = float(meta["train_seconds"])
        self.best_epoch = meta["best_epoch"]
        self.best_val_accuracy = None if self.best_epoch is None else float(meta["best_val_accuracy"])
        self.history = meta["history"]
        if not (isinstance(self.history, dict) and isinstance(self.history.get("steps"), list)
                and isinstance(self.history.get("epochs"), list)):
            raise ValueError("the history is not a dict of step and epoch lists")


class TrainingStep:
    """One training step on a training set held on the device, as the trainer runs it.

    ``step(idx)`` takes the batch's image indices (a device integer array) and returns
    the batch's mean loss, a 0-d device array that the next call overwrites (copy what
    you keep); ``correct`` counts on the device the training images classified correctly
    since it was last zeroed. The host half of the optimizer's step (``prepare_step``:
    its counts, and its per-step scalars written to the device) runs first; then the
    batch gather, forward, loss, backward and the optimizer's update run as one function
    that the backend may record once and replay (``Backend.capture_step``), as long as
    :meth:`signature`, the host values baked into it, stays the same. With an augmenter
    the batch is gathered and transformed before that function (the augmenter's smoothing
    is matrix products, cuBLAS calls on a GPU), which then starts at the forward pass.
    """

    def __init__(self, model, loss_fn, optimizer, x, y, augmenter=None):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.backend = backend = model.backend
        self.x, self.y = x, y
        self.augmenter = augmenter
        self.correct = backend.xp.zeros((), dtype=np.int64)
        body = self._from_indices if augmenter is None else self._from_batch
        self._run = backend.capture_step(body, signature=self.signature)

    def __call__(self, idx):
        self.optimizer.prepare_step()
        if self.augmenter is None:
            return self._run(idx)[0]
        xb = self.augmenter(self.backend.to_batch_last(self.x, idx))
        return self._run(xb, self.y[idx])[0]

    def _from_indices(self, idx):
        return self._from_batch(self.backend.to_batch_last(self.x, idx), self.y[idx])

    def _from_batch(self, xb, yb):
        """Forward, loss, backward and update on xb (C, H, W, B) with labels yb (B,);
        reads nothing back to the host, returns ``(loss,)``."""
        logits = self.model.forward(xb)
        loss = self.loss_fn.forward(logits, yb)
        self.backend.count_correct(logits, yb, self.correct)
        self.model.backward(self.loss_fn.backward())
        self.optimizer.update()
        return (loss,)

    def signature(self):
        """The host values a recorded step bakes in, or None while the optimizer's update
        reads per-step values on the host (the steps before every gradient exists)."""
        optimizer = self.optimizer.capture_key()
        if optimizer is None:
            return None
        return optimizer, self.loss_fn.label_smoothing, _settings(self.model)


def _settings(layer) -> tuple:
    """Every plain value (bool, int, float, str) a layer holds, and, for a Sequential
    (a model too), those of every layer inside it, nested ones included: train or eval
    mode, dropout rates, BatchNorm's momentum and eps, strides... Taking them all, rather
    than a list, keeps a new layer's option from being baked into a recorded step
    unnoticed."""
    own = tuple(sorted((k, v) for k, v in vars(layer).items() if type(v) in (bool, int, float, str)))
    inner = tuple(_settings(child) for child in getattr(layer, "layers", ()))
    return type(layer).__name__, own, inner


class Trainer:
    """One training run: set up from a config (or a checkpoint to resume), then :meth:`run`.

    Setting up goes in this order, each step needing the ones before: the config (from the
    checkpoint when resuming), the backend, the run folder's path, the data, the model,
    optimizer, schedule, loss and augmenter, the training state (restored when resuming),
    the training set on the device, and last the run folder itself, so a failed start
    leaves nothing behind. A run is then ``_train_epoch`` (the hot loop) and
    ``_end_epoch`` (evaluate, record, checkpoint) per epoch, and ``_metrics`` at the end.
    """

    def __init__(self, config: TrainConfig | None = None, out: str | Path | None = None,
                 resume: str | Path | None = None, epochs: int | None = None,
                 progress: bool | None = None, log: Callable[[str], None] | None = print,
                 on_epoch_end: Callable[[dict], bool | None] | None = None):
        checkpoint = load_checkpoint(resume) if resume is not None else None
        self.config = config = _settle_config(config, checkpoint, resume, epochs)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.log = log or (lambda _msg: None)
        self.on_epoch_end = on_epoch_end

        self.backend = backend = get_backend(config.backend)
        config.backend = backend.name  # "auto" resolved: a resume runs where the run ran
        self.out = _run_folder(out, resume, config, backend.name)
        if checkpoint is None and (self.out / "last.npz").exists():
            raise ConfigError(f"{self.out} already holds a run; continue it with --resume "
                              f"{self.out}, or choose another --out")

        dataset = load_dataset(config.dataset, config.data_dir)
        config.dataset = dataset.name  # None resolved, as "auto" is above
        self.data = prepare(dataset, val_size=config.val_size, seed=config.seed,
                            train_limit=config.train_limit)
        self.n_train = len(self.data.x_train)
        self.steps_per_epoch = math.ceil(self.n_train / config.batch_size)
        self._build_training(config)

        self.state = TrainingState(backend, np.random.default_rng(config.seed), self.model.rng,
                                   None if self.augmenter is None else self.augmenter.rng)
        if checkpoint is not None:
            self._restore(checkpoint, resume)

        # the whole training set lives on the device; batches are gathered there
        self.x_dev = backend.asarray(self.data.x_train, dtype=self.model.dtype)
        self.y_dev = backend.asarray(self.data.y_train)
        self._step = TrainingStep(self.model, self.loss_fn, self.optimizer, self.x_dev,
                                  self.y_dev, self.augmenter)
        try:  # only now that everything above succeeded, so a failed start leaves nothing
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the run folder {self.out}: {exc.strerror}; "
                              "choose another --out") from None

    def _build_training(self, config: TrainConfig) -> None:
        """The model (its kernels made ready), optimizer, schedule, loss and augmenter."""
        backend = self.backend
        self.model = build_model(config.model, backend, dtype=config.dtype, seed=config.seed)
        note = backend.prepare(self.model.dtype)
        if note:
            self.log(note)
        self.model.check_images(self.data.x_train)
        self.optimizer = make_optimizer(config.optimizer, self.model.parameters(), backend,
                                        lr=config.lr, weight_decay=config.weight_decay)
        self.schedule = make_schedule(config.schedule, config.lr,
                                      total_steps=config.epochs * self.steps_per_epoch,
                                      steps_per_epoch=self.steps_per_epoch)
        self.loss_fn = SoftmaxCrossEntropy(label_smoothing=config.label_smoothing, backend=backend)
        self.augmenter = (Augmenter(backend, config.augment_settings(), self.data.mean,
                                    self.data.std, seed=config.seed) if config.augment else None)
        if self.augmenter is not None:
            self.augmenter.prepare(self.model.dtype)

    def _restore(self, checkpoint, path) -> None:
        try:
            self.model.load_state_dict(checkpoint.params)
            self.optimizer.load_state_dict(checkpoint.optim)
            self.state.restore(checkpoint.meta)
        except KeyError as exc:
            raise CheckpointError(f"{path}: checkpoint holds no training state ({exc.args[0]} is "
                                  "missing); resume from a run's last.npz") from None
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: checkpoint's training state is damaged ({exc}); "
                                  "resume from another checkpoint") from None
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None

    def run(self) -> dict:
        """Train until ``config.epochs``, the target accuracy or ``on_epoch_end`` says stop."""
        config, model, state = self.config, self.model, self.state
        write_json(self.out / "config.json", {**dataclasses.asdict(config), "fastlenet": __version__})
        if state.epoch == 0:
            self.log(f"fastlenet {__version__}: {config.model} ({model.num_parameters():,} parameters) "
                     f"on {config.dataset} with the {self.backend.name} backend; {self.n_train:,} "
                     f"training, {len(self.data.x_val):,} validation, {len(self.data.x_test):,} "
                     f"test images; run folder {self.out}")
        else:
            self.log(f"resuming {self.out} after epoch {state.epoch} (step {state.step})")
        stop_reason = None
        # Overflow on the way to a NaN loss is reported once, with the step it happened
        # at (see _check_losses); NumPy's own floating-point warnings would only add noise.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            while state.epoch < config.epochs and stop_reason is None:
                state.epoch += 1
                stop_reason = self._end_epoch(*self._train_epoch())
        if stop_reason:
            self.log(stop_reason)
        metrics = self._metrics(stop_reason)
        write_json(self.out / "metrics.json", metrics)
        self.log(f"test accuracy {metrics['test_accuracy']:.2%} after {metrics['epochs']} epochs, "
                 f"{state.train_seconds:.1f} s of training; results in {self.out}")
        return {**metrics, "run_dir": str(self.out)}

    def _train_epoch(self) -> tuple[float, float, float]:
        """One pass over the shuffled training set; returns (mean loss, accuracy, seconds)."""
        backend, config, state = self.backend, self.config, self.state
        self.model.train()
        perm = backend.asarray(state.shuffle_rng.permutation(self.n_train))
        pending = []  # device losses the host has not read yet
        loss_sum, seen = 0.0, 0
        correct = self._step.correct
        correct[...] = 0
        bar = _progress_bar(self.steps_per_epoch, f"epoch {state.epoch}/{config.epochs}", self.progress)
        tick = time.perf_counter()
        try:
            for start in range(0, self.n_train, config.batch_size):
                idx = perm[start:start + config.batch_size]
                self.optimizer.lr = self.schedule(state.step)
                pending.append(self._step(idx).copy())  # the next step overwrites its loss
                state.step += 1
                seen += len(idx)
                if len(pending) == config.log_every or start + config.batch_size >= self.n_train:
                    losses = self._check_losses(pending)
                    loss_sum += float(losses.sum())
                    bar.update(len(pending))
                    bar.set_postfix(loss=f"{losses[-1]:.4f}",
                                    acc=f"{float(backend.to_numpy(correct)) / seen:.2%}",
                                    img_s=f"{seen / max(time.perf_counter() - tick, 1e-9):,.0f}")
                    pending = []
            backend.synchronize()
        finally:
            bar.close()
        seconds = time.perf_counter() - tick
        state.train_seconds += seconds
        return loss_sum / self.steps_per_epoch, float(backend.to_numpy(correct)) / self.n_train, seconds

    def _check_losses(self, pending: list) -> np.ndarray:
        """Read the last steps' losses to the host, record them, stop on a NaN or inf."""
        state = self.state
        losses = self.backend.to_numpy(self.backend.xp.stack(pending)).astype(np.float64)
        first = state.step - len(losses)  # steps are counted from 0 here, from 1 in messages
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            raise TrainingDivergedError(
                f"loss became {losses[bad[0]]} at epoch {state.epoch}, step {first + bad[0] + 1}; "
                f"training stopped, {self._last_good()}; try a smaller --lr")
        state.history["steps"].extend(
            {"step": first + i + 1, "epoch": state.epoch, "loss": float(v), "lr": float(self.schedule(first + i))}
            for i, v in enumerate(losses))
        return losses

    def _last_good(self) -> str:
        if self.state.epoch > 1:
            return f"the last good checkpoint is {self.out / 'last.npz'}"
        return "no checkpoint was written (it diverged in the first epoch)"

    def _end_epoch(self, train_loss: float, train_accuracy: float, seconds: float) -> str | None:
        """Evaluate, record, checkpoint and report the epoch; return why to stop, if so."""
        config, data, state = self.config, self.data, self.state
        has_val = len(data.x_val) > 0
        val_loss, val_acc, _ = evaluate(self.model, data.x_val, data.y_val)
        test_loss, test_acc, _ = evaluate(self.model, data.x_test, data.y_test)
        if not np.isfinite(test_loss):  # the epoch's last updates broke the weights
            raise TrainingDivergedError(
                f"the weights became non-finite at the end of epoch {state.epoch} (test loss "
                f"{test_loss}); training stopped, {self._last_good()}; try a smaller --lr")
        record = {"epoch": state.epoch, "step": state.step, "train_loss": train_loss,
                  "train_accuracy": train_accuracy,
                  "val_loss": val_loss if has_val else None, "val_accuracy": val_acc if has_val else None,
                  "test_loss": test_loss, "test_accuracy": test_acc, "lr": self.optimizer.lr,
                  "epoch_seconds": seconds, "train_seconds": state.train_seconds,
                  "images_per_second": self.n_train / seconds}
        improved = state.record_epoch(record)
        params, optim_state, meta = self.model.state_dict(), self.optimizer.state_dict(), self._meta()
        save_checkpoint(self.out / "last.npz", params, optim_state, meta)
        if improved or not has_val:  # without a validation split, best is the latest
            save_checkpoint(self.out / "best.npz", params, optim_state, meta)
        write_json(self.out / "history.json", state.history)
        width = len(str(config.epochs))
        self.log(f"epoch {state.epoch:>{width}}/{config.epochs}  loss {train_loss:.4f}  "
                 f"train {train_accuracy:.2%}  {f'val {val_acc:.2%}  ' if has_val else ''}"
                 f"test {test_acc:.2%}  {seconds:.1f} s  {record['images_per_second']:,.0f} img/s")
        if config.target_accuracy is not None and val_acc >= config.target_accuracy:
            return f"validation accuracy {val_acc:.2%} reached the target {config.target_accuracy:.2%}"
        if self.on_epoch_end is not None and self.on_epoch_end(record):
            return "stopped by on_epoch_end"
        return None

    def _meta(self) -> dict:
        """Everything besides the arrays that inference and resuming need."""
        config, data = self.config, self.data
        return {"model": config.model, "dtype": config.dtype, "config": dataclasses.asdict(config),
                **self.state.to_meta(), "mean": data.mean, "std": data.std,
                "dataset": config.dataset, "class_names": list(data.class_names),
                "fastlenet": __version__}

    def _metrics(self, stop_reason: str | None) -> dict:
        state = self.state
        last = state.history["epochs"][-1] if state.history["epochs"] else {}
        return {
            "test_accuracy": last.get("test_accuracy"),
            "test_loss": last.get("test_loss"),
            "best_val_accuracy": state.best_val_accuracy,
            "best_epoch": state.best_epoch,
            "final_val_accuracy": last.get("val_accuracy"),
            "train_seconds": state.train_seconds,
            "epochs": state.epoch,
            "steps": state.step,
            "backend": self.backend.name,
            "model": self.config.model,
            "dataset": self.config.dataset,
            "parameters": self.model.num_parameters(),
            "batch_size": self.config.batch_size,
            "seed": self.config.seed,
            "stop_reason": stop_reason or "completed",
            "fastlenet": __version__,
        }


def _settle_config(config: TrainConfig | None, checkpoint, resume, epochs: int | None) -> TrainConfig:
    """The run's config, validated: a copy of ``config`` (default TrainConfig()), or the
    checkpoint's when resuming; ``epochs`` overrides; the data folder made absolute."""
    if checkpoint is not None:
        config = _config_from(checkpoint.meta, resume)
    config = dataclasses.replace(config or TrainConfig())
    if epochs is not None:
        config.epochs = epochs
    config.validate()
    if config.data_dir is not None:  # so a resume from elsewhere finds the same files
        config.data_dir = str(Path(config.data_dir).expanduser().resolve())
    return config


def _run_folder(out, resume, config: TrainConfig, backend_name: str) -> Path:
    """``out``; else the folder of the run resumed; else a new ``runs/<time>-...``."""
    if out is not None:
        return Path(out)
    if resume is not None:
        return Path(resume) if Path(resume).is_dir() else Path(resume).parent
    return default_run_dir(config, backend_name)


def _config_from(meta: dict, path) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = meta.get("config")
    if not isinstance(saved, dict) or not set(saved) <= known:
        raise CheckpointError(f"{path}: checkpoint's training config is missing or from another "
                              "fastlenet version; it cannot be resumed")
    return TrainConfig(**saved)


def train(config: TrainConfig | None = None, out: str | Path | None = None,
          resume: str | Path | None = None, epochs: int | None = None,
          progress: bool | None = None, log: Callable[[str], None] | None = print,
          on_epoch_end: Callable[[dict], bool | None] | None = None) -> dict:
    """Train a model and return its metrics (also written to ``<out>/metrics.json``).

    ``out``: the run folder (default ``runs/<time>-<model>-<backend>``).
    ``resume``: a run folder or checkpoint to continue; its config is used, except
    ``epochs`` when given (a longer cosine/one-cycle schedule then changes shape).
    ``progress``: show a progress bar (default: when stderr is a terminal).
    ``log``: where the one-line-per-epoch report goes (None: nowhere).
    ``on_epoch_end(record)``: called after each epoch's checkpoint; a true value stops.
    """
    return Trainer(config, out=out, resume=resume, epochs=epochs, progress=progress, log=log,
                   on_epoch_end=on_epoch_end).run()
