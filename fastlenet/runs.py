"""Run folders: reading back what ``fastlenet train`` wrote.

A run folder holds ``config.json`` (the TrainConfig), ``history.json`` (one record per
step and one per epoch), ``metrics.json`` once the run has ended, and the checkpoints.
Only the JSON files are read, so a run still in progress, or one stopped early, reads too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .checks import is_real
from .errors import RunFolderError

TARGETS = (0.97, 0.99)  # test accuracies whose time to reach every table reports

# config keys that never tell runs apart (in a legend, or a summary's "other settings")
NOT_SETTINGS = {"data_dir", "log_every", "fastlenet", "target_accuracy"}


@dataclass
class Run:
    """A run folder as read from disk.

    ``config``: config.json; ``history``: history.json (``steps``: one record per step,
    ``epochs``: one per epoch, at least one); ``metrics``: metrics.json, or None while the
    run has not ended.
    """

    path: Path
    config: dict
    history: dict
    metrics: dict | None = None

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def epochs(self) -> list[dict]:
        return self.history["epochs"]

    @property
    def steps_per_epoch(self) -> float:
        first = self.epochs[0]
        return first["step"] / first["epoch"]

    @property
    def train_seconds(self) -> float:
        return self.epochs[-1]["train_seconds"]

    def best_epoch(self) -> dict | None:
        """The epoch record best.npz was saved at: the first with the highest validation
        accuracy (None without a validation split: best.npz is then the last epoch)."""
        scored = [r for r in self.epochs if r["val_accuracy"] is not None]
        return max(scored, key=lambda r: r["val_accuracy"]) if scored else None

    def time_to(self, target: float) -> tuple[float, int] | None:
        """Training seconds and epoch at which test accuracy first reached ``target``
        (measured after each epoch), or None when it never did."""
        for record in self.epochs:
            if record["test_accuracy"] >= target:
                return record["train_seconds"], record["epoch"]
        return None


_EPOCH_KEYS = ("epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
               "train_seconds")


def load_run(path: str | Path) -> Run:
    """Read a run folder written by ``fastlenet train``; RunFolderError (one line) when it
    is missing, incomplete or damaged. An unfinished run (no metrics.json yet) reads too."""
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"{path}: no such run folder; pass a folder written by "
                             "'fastlenet train' (its --out)")
    config = _read_json(path / "config.json", "not a run folder written by 'fastlenet train'")
    history = _read_json(path / "history.json", "the run has not finished its first epoch, "
                         "or this is not a run folder written by 'fastlenet train'")
    damaged = f"{path / 'history.json'}: not a fastlenet training history"
    if not isinstance(config, dict):
        raise RunFolderError(f"{path / 'config.json'}: not a fastlenet run config (a JSON "
                             "object is expected); the run folder is damaged")
    if not (isinstance(history, dict) and isinstance(history.get("steps"), list)
            and isinstance(history.get("epochs"), list)):
        raise RunFolderError(f"{damaged} (no steps and epochs lists); the file is damaged")
    if not history["epochs"]:
        raise RunFolderError(f"{damaged}: it records no finished epoch; train at least one")
    for record in history["epochs"]:
        bad = [k for k in _EPOCH_KEYS if not is_real(record.get(k) if isinstance(record, dict) else None)]
        if bad or not (record.get("val_accuracy") is None or is_real(record["val_accuracy"])):
            raise RunFolderError(f"{damaged}: an epoch record lacks a valid "
                                 f"{bad[0] if bad else 'val_accuracy'}; the file is damaged or "
                                 "from another fastlenet version")
    if not all(isinstance(s, dict) and is_real(s.get("step")) and is_real(s.get("loss"))
               for s in history["steps"]):
        raise RunFolderError(f"{damaged}: a step record lacks a valid step or loss; the file "
                             "is damaged or from another fastlenet version")
    metrics = None
    if (path / "metrics.json").is_file():
        metrics = _read_json(path / "metrics.json", "")
        if not isinstance(metrics, dict):
            raise RunFolderError(f"{path / 'metrics.json'}: not a fastlenet run summary (a "
                                 "JSON object is expected); the run folder is damaged")
    return Run(path, config, history, metrics)


def run_status(path: str | Path) -> str | None:
    """How a run ended, as its metrics.json records it: "finished" or "diverged" (the
    command then exits with status 3); None while it has not ended, or unreadable."""
    try:
        metrics = json.loads((Path(path) / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return metrics.get("status") if isinstance(metrics, dict) else None


def _read_json(file: Path, why_missing: str):
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunFolderError(f"{file.parent}: no {file.name}; {why_missing}") from None
    except OSError as exc:
        raise RunFolderError(f"{file}: cannot read the file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise RunFolderError(f"{file}: not a text file; the run folder is damaged") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{file}: corrupt JSON ({exc.msg} at line {exc.lineno}); the "
                             "run folder is damaged, restore the file or train again") from None


def setting_text(value) -> str:
    """A config value as a legend or summary shows it."""
    return "none" if value is None else str(value)
