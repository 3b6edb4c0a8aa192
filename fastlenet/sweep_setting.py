"""One setting of a sweep: its folder name, its train options, and its row as read back
from its run folder (the same for every runner, local or on a Dask cluster)."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig, option_name
from .errors import RunFolderError
from .runs import TARGETS, load_run, run_status
from .tables import raw_text

# what keeps BLAS (OpenBLAS, MKL, OpenMP) and Numba to one thread, set before numpy loads:
# OpenBLAS and Numba threads busy-wait, and several trainings each with a full set of
# threads on the same cores can run many times slower than one at a time
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS")
# statuses of a setting that has not ended; every other status is its final one
UNFINISHED = ("pending", "running", "interrupted")


@dataclass
class Setting:
    """A setting to train: its row number, train options (the grid's values over the
    fixed ones), run folder, and whether that folder holds a checkpoint to resume from."""

    index: int
    values: dict
    run_dir: Path

    @property
    def resumes(self) -> bool:
        return (self.run_dir / "last.npz").is_file()


def settings(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, the last option varying fastest."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def setting_name(values: dict) -> str:
    """A folder name for a setting, e.g. ``lr-0.001_batch-size-64``."""
    parts = [f"{option_name(field)[2:]}-{raw_text(value)}" for field, value in values.items()]
    return "_".join(parts).replace("/", "-") or "default"


def _applies(field: str, values: dict) -> bool:
    """The ``augment_*`` settings apply only where ``augment`` is on (a grid over
    ``--augment off,on``): the train command refuses them without ``--augment``."""
    return not (field.startswith("augment_") and not values.get("augment"))


def train_arguments(values: dict) -> list[str]:
    """``fastlenet train`` options for TrainConfig fields, e.g. ["--lr", "0.001"]."""
    argv = []
    for field, value in values.items():
        if not _applies(field, values):
            continue
        if isinstance(value, bool):  # a flag: present or absent
            argv += [option_name(field)] if value else []
        elif value is not None:
            argv += [option_name(field), str(value)]
    return argv


def train_config(values: dict) -> TrainConfig:
    """The TrainConfig that ``fastlenet train`` builds from :func:`train_arguments`."""
    return TrainConfig(**{field: value for field, value in values.items()
                          if _applies(field, values) and value is not None})


def one_thread_environment() -> dict:
    """This process's environment with one BLAS and one Numba thread (see THREAD_VARIABLES)."""
    return {**os.environ, **{name: "1" for name in THREAD_VARIABLES}}


def run_result(run_dir: Path, returncode: int, wall_seconds: float) -> dict:
    """A finished setting's row fields, from its run folder: "diverged" when its
    metrics.json says so, "ok" (or why it stopped early) when it finished, else
    "failed: <the last line of train.log>"."""
    result = {"wall_seconds": wall_seconds}
    if run_status(run_dir) == "diverged":  # even when no epoch finished to load
        return {**result, "status": "diverged"}
    try:
        run = load_run(run_dir)
    except RunFolderError:
        run = None
    if run is None or run.metrics is None:
        try:
            lines = (run_dir / "train.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        reason = lines[-1].removeprefix("fastlenet: error: ") if lines else f"exit status {returncode}"
        return {**result, "status": f"failed: {reason}"}
    metrics = run.metrics
    result.update({key: metrics.get(key) for key in ("test_accuracy", "best_val_accuracy",
                                                      "best_epoch", "epochs", "train_seconds")})
    for target in TARGETS:
        reached = run.time_to(target)
        result[f"seconds_to_{round(target * 100)}"] = None if reached is None else reached[0]
    stop = metrics.get("stop_reason", "completed")
    result["status"] = "ok" if stop == "completed" else stop
    return result


def run_files(folder: Path) -> dict[str, bytes]:
    """A run folder's files (not its half-written temporaries) as ``{name: bytes}``."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())
            if path.is_file() and not path.name.startswith(".")}


def summary(row: dict) -> str:
    """A finished row in a few words, for the progress lines."""
    if row.get("test_accuracy") is None:
        return row["status"]
    return f"test {row['test_accuracy']:.2%} after {row['train_seconds']:.1f} s of training"
