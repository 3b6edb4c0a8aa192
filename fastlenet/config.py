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


# The recipes: what a run's settings default to (Adam with a one-cycle schedule in each).
# "fast", the default, was chosen on validation accuracy for 99% test accuracy in 4 epochs
# (docs/performance.md, The fast recipe); "augment", the default with --augment, trains
# longer, as augmented images keep teaching (docs/augmentation.md); "classic" is the
# 8-epoch recipe that was the default before "fast".
RECIPES = {
    "fast": {"epochs": 4, "batch_size": 64, "lr": 5e-3, "label_smoothing": 0.1,
             "beta1": 0.9, "beta2": 0.99},
    "augment": {"epochs": 40, "batch_size": 128, "lr": 3e-3, "label_smoothing": 0.0,
                "beta1": 0.9, "beta2": 0.999},
    "classic": {"epochs": 8, "batch_size": 128, "lr": 5e-3, "label_smoothing": 0.0,
                "beta1": 0.9, "beta2": 0.999},
}


def default_recipe(augment: bool) -> str:
    """The recipe a run takes when none is named."""
    return "augment" if augment else "fast"


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved with every checkpoint.

    The fields a recipe sets (RECIPES) left at None take the recipe's values; ``recipe``
    left at None is :func:`default_recipe`, which depends on ``augment``. :meth:`validate`
    fills them in. ``beta1`` and ``beta2`` are Adam's.
    """

    model: str = "lenet5"
    backend: str = "auto"
    recipe: str | None = None
    dataset: str | None = None  # None: "custom" when a data folder is given, else "mnist"
    data_dir: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str = "adam"
    lr: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    schedule: str = "onecycle"
    weight_decay: float = 0.0
    label_smoothing: float | None = None
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
        """Fill in the recipe's values where None, then raise ConfigError for the first
        out-of-range value; return self."""
        if not isinstance(self.augment, bool):
            raise ConfigError(f"augment must be True or False, got {self.augment!r}")
        if self.recipe is None:
            self.recipe = default_recipe(self.augment)
        if self.recipe not in RECIPES:
            raise ConfigError(f"unknown recipe '{self.recipe}'; choose one of: {', '.join(RECIPES)}")
        for name, value in RECIPES[self.recipe].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        integers = ("epochs", "batch_size", "seed", "val_size", "log_every")
        reals = ("lr", "beta1", "beta2", "weight_decay", "label_smoothing")
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
            (0 <= self.beta1 < 1, f"--beta1 must be in [0, 1), got {self.beta1}"),
            (0 <= self.beta2 < 1, f"--beta2 must be in [0, 1), got {self.beta2}"),
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

    def optimizer_options(self) -> dict:
        """The options of ``make_optimizer`` beyond lr and weight decay: Adam's betas."""
        return {"betas": (self.beta1, self.beta2)} if self.optimizer == "adam" else {}

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
