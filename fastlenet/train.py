"""The training loop: batches, evaluation, history, checkpoints, early stop, progress.

It knows nothing of any particular backend: data is uploaded to the backend's device
once, each epoch's shuffled order is uploaded as one index array, batches are gathered on
the device, and the host reads losses back only every ``log_every`` steps.

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
from .backends import get_backend
from .checkpoint import load_checkpoint, save_checkpoint, write_json
from .data import DATASETS, load_dataset, prepare
from .errors import ConfigError, TrainingDivergedError
from .nn import MODELS, SoftmaxCrossEntropy, build_model
from .optim import OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved with every checkpoint."""

    model: str = "lenet5"
    backend: str = "auto"
    dataset: str = "mnist"
    data_dir: str | None = None
    epochs: int = 12
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 2e-3
    schedule: str = "cosine"
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    seed: int = 0
    val_size: int = 5000
    target_accuracy: float | None = None
    dtype: str = "float32"
    train_limit: int | None = None  # use only this many training images (quick runs)
    log_every: int = 20  # host reads the loss every this many steps

    def validate(self) -> "TrainConfig":
        """Raise ConfigError for the first out-of-range value; return self."""
        checks = [
            (self.model in MODELS, f"unknown model '{self.model}'; choose one of: {', '.join(MODELS)}"),
            (self.dataset in DATASETS, f"unknown dataset '{self.dataset}'; choose one of: {', '.join(DATASETS)}"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer '{self.optimizer}'; choose one of: {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"unknown schedule '{self.schedule}'; choose one of: {', '.join(SCHEDULES)}"),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be a positive number, got {self.lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.val_size >= 0, f"--val-size must be >= 0, got {self.val_size}"),
            (self.target_accuracy is None or 0 < self.target_accuracy <= 1,
             f"--target-accuracy is a fraction in (0, 1], e.g. 0.99; got {self.target_accuracy}"),
            (self.target_accuracy is None or self.val_size > 0,
             "--target-accuracy needs a validation split; set --val-size above 0"),
            (self.dtype in ("float32", "float64"), f"dtype must be float32 or float64, got {self.dtype}"),
            (self.log_every >= 1, f"log_every must be at least 1, got {self.log_every}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self


def evaluate(model, x, y, batch_size: int = 1000):
    """Loss, accuracy and predictions of ``model`` (eval mode) on a host set.

    x: (N, 1, 32, 32) float host array; y: (N,) int labels.
    Returns ``(mean_loss, accuracy, predictions (N,) int64 host array)``.
    """
    backend = model.backend
    xp = backend.xp
    was_training = model.training
    model.eval()
    loss_fn = SoftmaxCrossEntropy(backend=backend)
    total_loss = xp.zeros((), dtype=np.float64)
    preds = []
    for start in range(0, len(x), batch_size):
        xb = backend.to_batch_last(backend.asarray(x[start:start + batch_size], dtype=model.dtype))
        yb = backend.asarray(y[start:start + batch_size])
        logits = model.forward(xb)
        total_loss += loss_fn.forward(logits, yb) * len(yb)
        preds.append(logits.argmax(axis=0))
    if was_training:
        model.train()
    if not preds:
        return float("nan"), float("nan"), np.zeros(0, dtype=np.int64)
    predictions = backend.to_numpy(xp.concatenate(preds)).astype(np.int64)
    loss = float(backend.to_numpy(total_loss)) / len(x)
    return loss, float((predictions == np.asarray(y)).mean()), predictions


def default_run_dir(config: TrainConfig, backend_name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{config.model}-{backend_name}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm  # a dependency, imported only when training

    return tqdm(total=total, desc=desc, unit="batch", leave=False, disable=not enabled,
                dynamic_ncols=True, file=sys.stderr)


def train(config: TrainConfig | None = None, out: str | Path | None = None,
          resume: str | Path | None = None, epochs: int | None = None,
          progress: bool | None = None, log: Callable[[str], None] | None = print,
          on_epoch_end: Callable[[dict], bool | None] | None = None) -> dict:
    """Train a model and return its metrics (also written to ``<out>/metrics.json``).

    ``resume``: a run folder or checkpoint to continue; its config is used, except
    ``epochs`` when given (a longer cosine/one-cycle schedule then changes shape).
    ``progress``: show a progress bar (default: when stderr is a terminal).
    ``on_epoch_end(record)``: called after each epoch's checkpoint; a true value stops.
    """
    log = log or (lambda _msg: None)
    state = None
    if resume is not None:
        state = load_checkpoint(resume)
        config = TrainConfig(**state.meta["config"])
        if out is None:
            resume_path = Path(resume)
            out = resume_path if resume_path.is_dir() else resume_path.parent
    config = dataclasses.replace(config or TrainConfig())
    if epochs is not None:
        config.epochs = epochs
    config.validate()
    if progress is None:
        progress = sys.stderr.isatty()

    backend = get_backend(config.backend)
    xp = backend.xp
    data = prepare(load_dataset(config.dataset, config.data_dir), val_size=config.val_size,
                   seed=config.seed, train_limit=config.train_limit)
    model = build_model(config.model, backend, dtype=config.dtype, seed=config.seed)
    optimizer = make_optimizer(config.optimizer, model.parameters(), backend, lr=config.lr,
                               weight_decay=config.weight_decay)
    n_train = len(data.x_train)
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    schedule = make_schedule(config.schedule, config.lr, total_steps=config.epochs * steps_per_epoch,
                             steps_per_epoch=steps_per_epoch)
    loss_fn = SoftmaxCrossEntropy(label_smoothing=config.label_smoothing, backend=backend)
    shuffle_rng = np.random.default_rng(config.seed)

    history = {"steps": [], "epochs": []}
    start_epoch, step, train_seconds = 0, 0, 0.0
    best_val, best_epoch = -1.0, None
    if state is not None:
        model.load_state_dict(state.params)
        optimizer.load_state_dict(state.optim)
        meta = state.meta
        shuffle_rng.bit_generator.state = meta["shuffle_rng"]
        backend.set_rng_state(model.rng, meta["model_rng"])
        history = meta["history"]
        start_epoch, step, train_seconds = meta["epoch"], meta["step"], meta["train_seconds"]
        best_val = meta["best_val_accuracy"] if meta["best_val_accuracy"] is not None else -1.0
        best_epoch = meta["best_epoch"]

    out = Path(out) if out is not None else default_run_dir(config, backend.name)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {**dataclasses.asdict(config), "backend_used": backend.name,
                                     "fastlenet": __version__})
    if state is None:
        log(f"fastlenet {__version__}: {config.model} ({model.num_parameters():,} parameters) "
            f"on {config.dataset} with the {backend.name} backend; {n_train:,} training, "
            f"{len(data.x_val):,} validation, {len(data.x_test):,} test images; run folder {out}")
    else:
        log(f"resuming {out} after epoch {start_epoch} (step {step})")

    # the whole training set lives on the device, one row per image, for row gathers
    x_dev = backend.asarray(data.x_train.reshape(n_train, -1), dtype=model.dtype)
    y_dev = backend.asarray(data.y_train.astype(np.int64))
    image_shape = data.x_train.shape[1:]

    def checkpoint_meta(epoch: int) -> dict:
        return {"model": config.model, "dtype": config.dtype, "config": dataclasses.asdict(config),
                "epoch": epoch, "step": step, "train_seconds": train_seconds,
                "shuffle_rng": shuffle_rng.bit_generator.state,
                "model_rng": backend.rng_state(model.rng),
                "best_val_accuracy": None if best_epoch is None else best_val,
                "best_epoch": best_epoch, "mean": data.mean, "std": data.std,
                "dataset": config.dataset, "class_names": list(data.class_names),
                "backend": backend.name, "history": history, "fastlenet": __version__}

    stop_reason = None
    epoch = start_epoch
    # Overflow on the way to a NaN loss is reported once, below, with the step it
    # happened at; NumPy's own floating-point warnings would only add noise.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for epoch in range(start_epoch + 1, config.epochs + 1):
            model.train()
            perm = backend.asarray(shuffle_rng.permutation(n_train))
            pending, window_start = [], step  # device losses not yet read by the host
            loss_sum, correct = 0.0, xp.zeros((), dtype=np.int64)
            bar = _progress_bar(steps_per_epoch, f"epoch {epoch}/{config.epochs}", progress)
            tick = time.perf_counter()
            seen = 0
            for start in range(0, n_train, config.batch_size):
                idx = perm[start:start + config.batch_size]
                xb = backend.to_batch_last(x_dev[idx]).reshape(*image_shape, len(idx))
                yb = y_dev[idx]
                logits = model.forward(xb)
                pending.append(loss_fn.forward(logits, yb))
                correct += (logits.argmax(axis=0) == yb).sum()
                model.backward(loss_fn.backward())
                optimizer.lr = schedule(step)
                optimizer.step()
                step += 1
                seen += len(idx)
                if len(pending) == config.log_every or start + config.batch_size >= n_train:
                    losses = backend.to_numpy(xp.stack(pending)).astype(np.float64)
                    bad = np.flatnonzero(~np.isfinite(losses))
                    if bad.size:
                        bar.close()
                        raise TrainingDivergedError(
                            f"loss became {losses[bad[0]]} at epoch {epoch}, step {window_start + bad[0] + 1}; "
                            f"training stopped, the last good checkpoint is {out / 'last.npz'}"
                            f"{'' if epoch > 1 else ' (none yet: it diverged in the first epoch)'}; "
                            "try a smaller --lr")
                    history["steps"].extend(
                        {"step": window_start + i + 1, "epoch": epoch, "loss": float(v),
                         "lr": float(schedule(window_start + i))} for i, v in enumerate(losses))
                    loss_sum += float(losses.sum())
                    elapsed = time.perf_counter() - tick
                    bar.update(len(pending))
                    bar.set_postfix(loss=f"{losses[-1]:.4f}", acc=f"{float(backend.to_numpy(correct)) / seen:.2%}",
                                    img_s=f"{seen / max(elapsed, 1e-9):,.0f}")
                    pending, window_start = [], step
            backend.synchronize()
            epoch_seconds = time.perf_counter() - tick
            bar.close()
            train_seconds += epoch_seconds

            val_loss, val_acc, _ = evaluate(model, data.x_val, data.y_val)
            test_loss, test_acc, _ = evaluate(model, data.x_test, data.y_test)
            record = {"epoch": epoch, "step": step, "train_loss": loss_sum / steps_per_epoch,
                      "train_accuracy": float(backend.to_numpy(correct)) / n_train,
                      "val_loss": val_loss if len(data.x_val) else None,
                      "val_accuracy": val_acc if len(data.x_val) else None,
                      "test_loss": test_loss, "test_accuracy": test_acc, "lr": optimizer.lr,
                      "epoch_seconds": epoch_seconds, "train_seconds": train_seconds,
                      "images_per_second": n_train / epoch_seconds}
            history["epochs"].append(record)
            improved = len(data.x_val) > 0 and val_acc > best_val
            if improved:
                best_val, best_epoch = val_acc, epoch
            meta = checkpoint_meta(epoch)
            params, optim_state = model.state_dict(), optimizer.state_dict()
            save_checkpoint(out / "last.npz", params, optim_state, meta)
            if improved:
                save_checkpoint(out / "best.npz", params, optim_state, meta)
            write_json(out / "history.json", history)
            val_text = f"val {val_acc:.2%}  " if len(data.x_val) else ""
            log(f"epoch {epoch:>{len(str(config.epochs))}}/{config.epochs}  loss {record['train_loss']:.4f}  "
                f"train {record['train_accuracy']:.2%}  {val_text}test {test_acc:.2%}  "
                f"{epoch_seconds:.1f} s  {record['images_per_second']:,.0f} img/s")
            if config.target_accuracy is not None and val_acc >= config.target_accuracy:
                stop_reason = f"validation accuracy {val_acc:.2%} reached the target {config.target_accuracy:.2%}"
            elif on_epoch_end is not None and on_epoch_end(record):
                stop_reason = "stopped by on_epoch_end"
            if stop_reason:
                log(stop_reason)
                break

    last = history["epochs"][-1] if history["epochs"] else {}
    metrics = {
        "test_accuracy": last.get("test_accuracy"),
        "test_loss": last.get("test_loss"),
        "best_val_accuracy": None if best_epoch is None else best_val,
        "best_epoch": best_epoch,
        "final_val_accuracy": last.get("val_accuracy"),
        "train_seconds": train_seconds,
        "epochs": epoch if history["epochs"] else 0,
        "steps": step,
        "backend": backend.name,
        "model": config.model,
        "dataset": config.dataset,
        "parameters": model.num_parameters(),
        "batch_size": config.batch_size,
        "seed": config.seed,
        "stop_reason": stop_reason or "completed",
        "fastlenet": __version__,
    }
    write_json(out / "metrics.json", metrics)
    log(f"test accuracy {metrics['test_accuracy']:.2%} after {metrics['epochs']} epochs, "
        f"{train_seconds:.1f} s of training; results in {out}")
    return {**metrics, "run_dir": str(out)}
