"""Grid sweeps: train every combination of some options, then tabulate and plot them.

Each setting trains in its own process (``python -m fastlenet train``) with its own run
folder, ``<sweep>/<option>-<value>_.../``, and its output in ``train.log`` there. A
setting that fails (diverges, bad data, a crash) becomes a row saying why; the others go
on. With ``jobs > 1`` that many settings train at once, each limited to one BLAS and one
Numba thread: OpenBLAS and Numba threads busy-wait, and a few processes each with a full
set of threads on the same cores can run many times slower than one at a time.

The sweep folder gets ``sweep.md`` and ``sweep.csv`` (rewritten atomically after every
finished setting, so they are never half-written and show progress), and ``sweep.png``,
test accuracy against training time per setting, when matplotlib is installed. Each
setting's results are read from its run folder with fastlenet.runs, as ``report`` and
``compare`` read theirs.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable


from . import tables
from .version import __version__
from .atomic_write import write_file
from .checks import is_integer
from .config import TrainConfig, option_name
from .errors import ConfigError, FastLeNetError, RunFolderError
from .figures import (PLOTS_HINT, new_figure, plot_accuracy_over_time, plot_last_accuracy,
                      png_bytes, require_matplotlib)
from .runs import TARGETS, load_run
from .tables import Column, raw_text, target_columns

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS")
# the table's columns after the swept options
_COLUMNS = [Column("status", "status"), Column("test_accuracy", "test acc (last epoch)", "percent"),
            Column("best_val_accuracy", "best val acc", "percent"),
            Column("best_epoch", "best epoch", "number"), Column("epochs", "epochs", "number"),
            Column("train_seconds", "train s", "seconds"), *target_columns(),
            Column("wall_seconds", "wall s", "seconds"), Column("run", "run")]


def settings(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, the last option varying fastest."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def setting_name(values: dict) -> str:
    """A folder name for a setting, e.g. ``lr-0.001_batch-size-64``."""
    parts = [f"{option_name(field)[2:]}-{raw_text(value)}" for field, value in values.items()]
    return "_".join(parts).replace("/", "-") or "default"


def train_arguments(values: dict) -> list[str]:
    """``fastlenet train`` options for TrainConfig fields, e.g. ["--lr", "0.001"].

    The ``augment_*`` settings are left out where ``augment`` is off (a grid over
    ``--augment off,on``), as the train command refuses them without ``--augment``.
    """
    argv = []
    for field, value in values.items():
        if field.startswith("augment_") and not values.get("augment"):
            continue
        if isinstance(value, bool):  # a flag: present or absent
            argv += [option_name(field)] if value else []
        elif value is not None:
            argv += [option_name(field), str(value)]
    return argv


def run_sweep(grid: dict[str, list], fixed: dict | None = None, out: str | Path | None = None,
              jobs: int = 1, log: Callable[[str], None] | None = print) -> list[dict]:
    """Train every setting of ``grid`` (TrainConfig field -> values) with the ``fixed``
    fields, ``jobs`` at a time; return one row per setting (also in sweep.md/.csv).

    Every setting is checked with TrainConfig before anything trains, so a bad value is
    one ConfigError naming the option.
    """
    fixed, log = dict(fixed or {}), log or (lambda _msg: None)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for field in [*grid, *fixed]:
        if field not in known:
            raise ConfigError(f"unknown train option '{field}' in the sweep")
    for field, values in grid.items():
        if not values:
            raise ConfigError(f"{option_name(field)} in the sweep has no values")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{option_name(field)} lists a value twice in the sweep")
    if not is_integer(jobs) or jobs < 1:
        raise ConfigError(f"--jobs must be an integer >= 1, got {jobs!r}")
    combos = settings(grid)
    for values in combos:
        TrainConfig(**{**fixed, **values}).validate()
    out = Path(out) if out is not None else Path("sweeps") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if (out / "sweep.csv").exists():
        raise ConfigError(f"{out} already holds a sweep; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the sweep folder {out}: {exc.strerror}; "
                          "choose another --out") from None
    from .folder_lock import lock_folder

    # one sweep writes a folder at a time: held until this call returns (or the process ends)
    lock = lock_folder(out, "sweep")  # noqa: F841 - held by being referenced

    rows = [{**values, "status": "pending", "run": setting_name(values)} for values in combos]
    header = _header(grid, fixed, jobs)
    log(f"sweep of {len(rows)} settings, {jobs} at a time, in {out}")
    env = _child_environment(jobs)
    waiting = list(range(len(rows)))
    running: dict[int, tuple[subprocess.Popen, float, io.TextIOBase]] = {}
    done = 0
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                i = waiting.pop(0)
                running[i] = _start(out / rows[i]["run"], {**fixed, **combos[i]}, env)
                rows[i]["status"] = "running"
            time.sleep(0.1)
            for i, (process, started, logfile) in list(running.items()):
                if process.poll() is None:
                    continue
                logfile.close()
                del running[i]
                rows[i].update(_result(out / rows[i]["run"], process.returncode,
                                       time.perf_counter() - started))
                done += 1
                log(f"[{done}/{len(rows)}] {rows[i]['run']}: {_summary(rows[i])}")
                write_tables(out, rows, list(grid), header)
    except BaseException:  # Ctrl-C included: stop the children, keep what finished
        for i, (process, _, logfile) in running.items():
            process.terminate()
            process.wait()
            logfile.close()
            rows[i]["status"] = "interrupted"
        write_tables(out, rows, list(grid), header)
        raise
    write_tables(out, rows, list(grid), header)
    try:
        require_matplotlib()
    except FastLeNetError:
        log(f"table in {out / 'sweep.md'} and {out / 'sweep.csv'}; the comparison plot needs "
            f"matplotlib: {PLOTS_HINT}")
    else:
        plot(out / "sweep.png", rows, out)
        log(f"table in {out / 'sweep.md'} and {out / 'sweep.csv'}, plot in {out / 'sweep.png'}")
    return rows


def _header(grid: dict, fixed: dict, jobs: int) -> str:
    swept = ", ".join(option_name(f) for f in grid) or "nothing"
    others = " ".join(train_arguments(fixed)) or "the defaults"
    timing = (f"{jobs} settings trained at once, one thread each: their times compete for "
              "the CPU" if jobs > 1 else "one setting at a time")
    return (f"fastlenet {__version__} sweep over {swept}; other options: {others}; "
            f"{timing}; times are training seconds (evaluation excluded)")


def _child_environment(jobs: int) -> dict:
    """The environment of each training process: this fastlenet first on the path and,
    when several run at once, one thread each (set before the child imports numpy)."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    if jobs > 1:
        env.update({name: "1" for name in THREAD_VARIABLES})
    return env


def _start(run_dir: Path, values: dict, env: dict):
    run_dir.mkdir(parents=True, exist_ok=True)
    logfile = open(run_dir / "train.log", "w")
    command = [sys.executable, "-m", "fastlenet", "train", *train_arguments(values),
               "--out", str(run_dir), "--no-progress"]
    process = subprocess.Popen(command, stdout=logfile, stderr=subprocess.STDOUT, env=env,
                               stdin=subprocess.DEVNULL)
    return process, time.perf_counter(), logfile


def _result(run_dir: Path, returncode: int, wall_seconds: float) -> dict:
    """A finished setting's row fields, from its run folder."""
    from .runs import run_status  # a diverged run exits 3; its metrics.json says so

    result = {"wall_seconds": wall_seconds}
    if run_status(run_dir) == "diverged":
        return {**result, "status": "diverged"}
    run = None
    if returncode == 0:
        try:
            run = load_run(run_dir)
        except RunFolderError:
            pass
    if run is None or run.metrics is None:
        lines = (run_dir / "train.log").read_text(errors="replace").strip().splitlines()
        reason = lines[-1].removeprefix("fastlenet: error: ") if lines else f"exit status {returncode}"
        return {**result, "status": f"failed: {reason}"}
    metrics = run.metrics
    result.update({key: metrics.get(key) for key in ("test_accuracy", "best_val_accuracy",
                                                      "best_epoch", "epochs", "train_seconds")})
    for target in TARGETS:
        reached = run.time_to(target)
        result[f"seconds_to_{round(target * 100)}"] = None if reached is None else reached[0]
    result["status"] = "ok" if metrics["stop_reason"] == "completed" else metrics["stop_reason"]
    return result


def _summary(row: dict) -> str:
    if row.get("test_accuracy") is None:
        return row["status"]
    return f"test {row['test_accuracy']:.2%} after {row['train_seconds']:.1f} s of training"


# ------------------------------------------------------------------ table and plot
def write_tables(out: Path, rows: list[dict], swept: list[str], header: str) -> None:
    """sweep.md (for reading) and sweep.csv (raw numbers), each written atomically."""
    columns = [Column(field, option_name(field), csv=option_name(field)[2:]) for field in swept]
    tables.write_tables(out / "sweep", columns + _COLUMNS, rows, heading=header)


def plot(path: Path, rows: list[dict], out: Path) -> None:
    """Test accuracy against training time for every setting that ran, and each
    setting's last test accuracy as a dot (needs matplotlib)."""
    fig = new_figure((12, max(4.5, 0.35 * len(rows) + 1.5)))
    curves, bars = fig.subplots(1, 2, width_ratios=(3, 2))
    finished = [row for row in rows if row.get("test_accuracy") is not None]
    plot_accuracy_over_time(curves, [load_run(out / row["run"]) for row in finished],
                            [row["run"] for row in finished])
    curves.set_title("Test accuracy after each epoch")
    if finished:
        curves.legend(fontsize=8)
    plot_last_accuracy(bars, [r["run"] for r in rows], [r.get("test_accuracy") for r in rows],
                       [r["status"].split(":")[0] for r in rows])
    write_file(path, png_bytes(fig))
