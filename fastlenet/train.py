"""The training loop: epochs of steps, evaluation, history, checkpoints, early stop.

It knows nothing of any particular backend: data is uploaded to the backend's device
once, each epoch's shuffled order is uploaded as one index array, batches are gathered on
the device (fastlenet.training_step), and the host reads losses back only every
``log_every`` steps.

A run folder holds ``config.json``, ``history.json`` (per step and per epoch),
``metrics.json``, and the checkpoints ``last.npz`` (every epoch) and ``best.npz`` (best
validation accuracy so far). Resuming from ``last.npz`` restores weights, optimizer state
and every RNG, so an interrupted run resumed gives the same result as one never stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np

from .version import __version__
from .atomic_write import write_json
from .augment import Augmenter
from .backends import get_backend
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, option_name
from .data import load_dataset, prepare
from .divergence import FACTOR, advice, exploded, starting_loss
from .errors import (CheckpointError, ConfigError, DeviceError, FastLeNetError,
                     RunFolderError, TrainingDivergedError, TrainingInterrupted)
from .evaluation import evaluate
from .folder_lock import lock_folder
from .nn import SoftmaxCrossEntropy, build_model
from .optim import make_optimizer, make_schedule
from .progress import progress_bar
from .training_state import TrainingState
from .training_step import TrainingStep


def default_run_dir(config: TrainConfig, backend_name: str) -> Path:
    """A new ``runs/<time>-<model>-<backend>`` folder name, numbered if it exists."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{config.model}-{backend_name}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


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
        self._lock = None  # the run folder's (fastlenet.folder_lock), held until run() ends
        try:
            self._set_up(config, out, resume, epochs, progress, log, on_epoch_end)
        except BaseException as exc:
            self.release()
            failure = self._device_error(exc, setting_up=True)
            if failure is not None:
                raise failure from exc
            raise

    def _set_up(self, config, out, resume, epochs, progress, log, on_epoch_end) -> None:
        if out is not None or resume is not None:  # an existing folder: lock it before reading
            self._hold(_run_folder(out, resume, None, ""))
        checkpoint, saved = _resume_point(resume)
        self.restarted = saved is not None  # resumed, but no epoch was saved: from the start
        self.config = config = _settle_config(saved or config, checkpoint, resume, epochs)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.log = log or (lambda _msg: None)
        self.on_epoch_end = on_epoch_end

        self.backend = backend = get_backend(config.backend)
        config.backend = backend.name  # "auto" resolved: a resume runs where the run ran
        self.out = _run_folder(out, resume, config, backend.name)
        self._refuse_a_finished_run(checkpoint)

        dataset = load_dataset(config.dataset, config.data_dir)
        config.dataset = dataset.name  # None resolved, as "auto" is above
        self.data = prepare(dataset, val_size=config.val_size, seed=config.seed,
                            train_limit=config.train_limit)
        self.n_train = len(self.data.x_train)
        self.steps_per_epoch = math.ceil(self.n_train / config.batch_size)
        self._build_training(config)  # checks the images first: a wrong size is the root cause
        if config.batch_size > self.n_train:  # one step per epoch, silently: refuse it
            raise ConfigError(f"--batch-size {config.batch_size} is more than the {self.n_train:,} "
                              f"training images; use at most {self.n_train}")

        self.state = TrainingState(backend, np.random.default_rng(config.seed), self.model.rng,
                                   None if self.augmenter is None else self.augmenter.rng)
        if checkpoint is not None:
            self._restore(checkpoint, resume)
        self._saved_epoch = self.state.epoch  # the epoch last.npz holds

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
        self._hold(self.out)
        self._refuse_a_finished_run(checkpoint)  # again: one may have ended since the check

    def _hold(self, folder: Path) -> None:
        """Lock the run folder, once it exists, for this run (FolderInUseError if taken)."""
        if self._lock is None and folder.is_dir():
            self._lock = lock_folder(folder, "run")
            for stale in folder.glob(".*.tmp"):  # atomic_write's, of a writer killed mid-write
                stale.unlink(missing_ok=True)

    def release(self) -> None:
        """Let other processes write the run folder (run() does this when it ends)."""
        if self._lock is not None:
            self._lock.release()

    def _refuse_a_finished_run(self, checkpoint) -> None:
        if checkpoint is None and (self.out / "last.npz").exists():
            self.release()
            raise ConfigError(f"{self.out} already holds a run; continue it with --resume "
                              f"{self.out}, or choose another --out")

    def _build_training(self, config: TrainConfig) -> None:
        """The model (its kernels made ready), optimizer, schedule, loss and augmenter."""
        backend = self.backend
        self.model = build_model(config.model, backend, dtype=config.dtype, seed=config.seed)
        note = backend.prepare(self.model.dtype)
        if note:
            self.log(note)
        self.model.check_images(self.data.x_train)
        self.optimizer = make_optimizer(config.optimizer, self.model.parameters(), backend,
                                        lr=config.lr, weight_decay=config.weight_decay,
                                        **config.optimizer_options())
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
        try:
            return self._run()
        except KeyboardInterrupt:
            raise TrainingInterrupted(f"interrupted {self._where()}; {self._how_to_continue()}") from None
        except OSError as exc:  # disk full, a read-only folder: the files before are intact
            raise RunFolderError(f"cannot write {exc.filename or self.out} ({exc.strerror or exc}); "
                                 f"training stopped {self._where()}; {self._how_to_continue()} "
                                 "once the disk has room or the folder is writable") from None
        except Exception as exc:
            failure = self._device_error(exc)
            if failure is None:
                raise
            raise failure from exc
        finally:
            self.release()

    def _device_error(self, exc: BaseException, setting_up: bool = False) -> DeviceError | None:
        """One line for a device failure (out of memory, the device lost), else None."""
        backend = getattr(self, "backend", None)
        if backend is None or not isinstance(exc, Exception) or isinstance(exc, FastLeNetError):
            return None
        found = backend.device_failure(exc)
        if found is None:
            return None
        kind, detail = found
        if kind == "memory":
            size = option_name("batch_size")
            return DeviceError(f"the {backend.name} device ran out of memory training with {size} "
                               f"{self.config.batch_size} ({detail}); train with a smaller {size}, "
                               "or stop what else uses the device")
        if setting_up:
            return DeviceError(f"the {backend.name} device failed while the run was set up "
                               f"({detail}); nothing was written; 'fastlenet info' checks the device")
        return DeviceError(f"the {backend.name} device failed {self._where()} ({detail}); once "
                           f"it works again ('fastlenet info' checks it), {self._how_to_continue()}")

    def _where(self) -> str:
        epoch = self.state.epoch
        return f"in epoch {epoch} of {self.config.epochs}" if epoch else "before its first epoch"

    def _how_to_continue(self) -> str:
        """Where a stopped run stands and the command that continues it."""
        command = f"fastlenet train --resume {shlex.quote(str(self.out))}"
        saved = self._saved_epoch
        if saved:
            return f"{self.out / 'last.npz'} holds epoch {saved}; continue with: {command}"
        if not (self.out / "config.json").is_file():
            return "nothing was written yet"
        return (f"no checkpoint was written yet; {command} starts it again from the beginning "
                "with its saved settings")

    def _run(self) -> dict:
        config, model, state = self.config, self.model, self.state
        write_json(self.out / "config.json", {**dataclasses.asdict(config), "fastlenet": __version__})
        if self.restarted:
            self.log(f"{self.out} stopped before its first checkpoint: training it again "
                     "from the beginning with its saved settings")
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
            try:
                while state.epoch < config.epochs and stop_reason is None:
                    state.epoch += 1
                    stop_reason = self._end_epoch(*self._train_epoch())
            except TrainingDivergedError as exc:  # recorded, so sweeps and reports see it
                write_json(self.out / "history.json", {**state.history, "status": "diverged"})
                write_json(self.out / "metrics.json", self._metrics(str(exc), "diverged"))
                raise
        if stop_reason:
            self.log(stop_reason)
        metrics = self._metrics(stop_reason)
        write_json(self.out / "metrics.json", metrics)
        epochs = f"{metrics['epochs']} epoch{'' if metrics['epochs'] == 1 else 's'}"
        self.log(f"test accuracy {metrics['test_accuracy']:.2%} after {epochs}, "
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
        bar = progress_bar(self.steps_per_epoch, f"epoch {state.epoch}/{config.epochs}", self.progress)
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
            raise self._diverged(f"loss became {losses[bad[0]]} at epoch {state.epoch}, "
                                 f"step {first + bad[0] + 1}")
        steps = state.history["steps"]
        steps.extend(
            {"step": first + i + 1, "epoch": state.epoch, "loss": float(v), "lr": float(self.schedule(first + i))}
            for i, v in enumerate(losses))
        start = starting_loss(steps[0]["loss"], self.model.num_classes)
        mean = exploded([s["loss"] for s in steps], self.config.batch_size, start)
        if mean is not None:
            raise self._diverged(f"the mean loss of the last steps rose to {mean:.4g}, over "
                                 f"{FACTOR:g}x its starting {start:.4g}, at epoch {state.epoch}, "
                                 f"step {state.step}")
        return losses

    def _diverged(self, what: str) -> TrainingDivergedError:
        """The one line saying the run diverged, where, what is kept and the fix."""
        if self.state.epoch > 1:
            kept = f"the last good checkpoint is {self.out / 'last.npz'} (epoch {self.state.epoch - 1})"
        else:
            kept = "no checkpoint was written (it diverged in the first epoch)"
        return TrainingDivergedError(f"training diverged: {what}; stopped, {kept}; "
                                     f"{advice(self.config.lr)}")

    def _end_epoch(self, train_loss: float, train_accuracy: float, seconds: float) -> str | None:
        """Evaluate, record, checkpoint and report the epoch; return why to stop, if so."""
        config, data, state = self.config, self.data, self.state
        has_val = len(data.x_val) > 0
        val_loss, val_acc, _ = evaluate(self.model, data.x_val, data.y_val)
        test_loss, test_acc, _ = evaluate(self.model, data.x_test, data.y_test)
        if not np.isfinite(test_loss):  # the epoch's last updates broke the weights
            raise self._diverged(f"the weights became non-finite at the end of epoch "
                                 f"{state.epoch} (test loss {test_loss})")
        record = {"epoch": state.epoch, "step": state.step, "train_loss": train_loss,
                  "train_accuracy": train_accuracy,
                  "val_loss": val_loss if has_val else None, "val_accuracy": val_acc if has_val else None,
                  "test_loss": test_loss, "test_accuracy": test_acc, "lr": self.optimizer.lr,
                  "epoch_seconds": seconds, "train_seconds": state.train_seconds,
                  "images_per_second": self.n_train / seconds}
        improved = state.record_epoch(record)
        params, optim_state, meta = self.model.state_dict(), self.optimizer.state_dict(), self._meta()
        save_checkpoint(self.out / "last.npz", params, optim_state, meta)
        self._saved_epoch = state.epoch
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

    def _metrics(self, stop_reason: str | None, status: str = "finished") -> dict:
        """metrics.json; ``status`` is "finished" or "diverged" (figures then of the last
        good epoch)."""
        state = self.state
        last = state.history["epochs"][-1] if state.history["epochs"] else {}
        return {
            "status": status,
            "test_accuracy": last.get("test_accuracy"),
            "test_loss": last.get("test_loss"),
            "best_val_accuracy": state.best_val_accuracy,
            "best_epoch": state.best_epoch,
            "final_val_accuracy": last.get("val_accuracy"),
            "train_seconds": state.train_seconds,
            "epochs": last.get("epoch", 0),
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


def _resume_point(resume) -> tuple:
    """``(checkpoint, None)`` to continue ``resume``; ``(None, its saved config)`` for a run
    folder stopped before its first checkpoint, which trains again from the start."""
    if resume is None:
        return None, None
    folder = Path(resume)
    if folder.is_dir() and not (folder / "last.npz").exists() and (folder / "config.json").is_file():
        path = folder / "config.json"
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: unreadable ({exc}); the run has no checkpoint "
                                  "either, so it cannot be resumed: train it again") from None
        if isinstance(saved, dict):
            saved.pop("fastlenet", None)
        return None, _config_from({"config": saved}, path)
    return load_checkpoint(resume), None


def _config_from(meta: dict, path) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = meta.get("config")
    if not isinstance(saved, dict) or not set(saved) <= known:
        raise CheckpointError(f"{path}: checkpoint's training config is missing or from another "
                              "fastlenet version; it cannot be resumed")
    if "recipe" not in saved:  # saved before recipes had names: it ran the classic one
        saved = {**saved, "recipe": "classic"}
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
