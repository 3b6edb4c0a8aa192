"""TrainConfig: every setting of a training run, its defaults and its checks.

Each field is also a ``fastlenet train`` option, spelled by :func:`option_name`, which
error messages and the sweep's child commands use.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .augment import AugmentSettings
from .checks import is_integer, is_real
from .data import DATASETS
from .errors import ConfigError
from .nn import DTYPES, MODELS
from .optim import OPTIMIZERS, SCHEDULES


# The default recipes (batch 128, Adam, one-cycle schedule), without augmentation and
# with it: augmented images keep teaching for longer, so that recipe runs longer. How they
# were chosen: docs/augmentation.md.
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
