"""What a run carries from epoch to epoch, and its round trip through a checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .backends import Backend


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
