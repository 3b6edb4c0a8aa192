"""Grid sweeps: train every combination of some options, then tabulate and plot them.

Each setting trains in its own process (``python -m fastlenet train``) with its own run
folder, ``<sweep>/<option>-<value>_.../``, and its output in ``train.log`` there. A
setting that fails (diverges, bad data, a crash) becomes a row saying why; the others go
on. With ``jobs > 1`` that many settings train at once, each limited to one BLAS and one
Numba thread: OpenBLAS and Numba threads busy-wait, and a few processes each with a full
set of threads on the same cores can run many times slower than one at a time.

The sweep folder gets ``sweep.md`` and ``sweep.csv`` (rewritten atomically after every
finished setting, so they are never half-written and show progress), and ``sweep.png``,
test accuracy against training time per setting, when matplotlib is installed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import fastlenet

from . import __version__
from .checkpoint import atomic_open
from .checks import is_integer
from .errors import ConfigError
from .train import TrainConfig, _option

TARGETS = (0.97, 0.99)  # test accuracies whose time-to-reach the table reports
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS")
PLOT_HINT = 'the comparison plot needs matplotlib: pip install "fastlenet[plots]"'
_COLUMNS = ("status", "test_accuracy", "best_val_accuracy", "best_epoch", "epochs",
            "train_seconds", *(f"seconds_to_{round(t * 100)}" for t in TARGETS),
            "wall_seconds", "run")


def settings(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, the last option varying fastest."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def setting_name(values: dict) -> str:
    """A folder name for a setting, e.g. ``lr-0.001_batch-size-64``."""
    parts = [f"{_option(field)[2:]}-{_text(value)}" for field, value in values.items()]
    return "_".join(parts).replace("/", "-") or "default"


def _text(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


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
            argv += [_option(field)] if value else []
        elif value is not None:
            argv += [_option(field), str(value)]
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
            raise ConfigError(f"{_option(field)} in the sweep has no values")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{_option(field)} lists a value twice in the sweep")
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
        plot(out / "sweep.png", rows, out)
        log(f"table in {out / 'sweep.md'} and {out / 'sweep.csv'}, plot in {out / 'sweep.png'}")
    except ImportError:
        log(f"table in {out / 'sweep.md'} and {out / 'sweep.csv'}; {PLOT_HINT}")
    return rows


def _header(grid: dict, fixed: dict, jobs: int) -> str:
    swept = ", ".join(_option(f) for f in grid) or "nothing"
    others = " ".join(train_arguments(fixed)) or "the defaults"
    timing = (f"{jobs} settings trained at once, one thread each: their times compete for "
              "the CPU" if jobs > 1 else "one setting at a time")
    return (f"fastlenet {__version__} sweep over {swept}; other options: {others}; "
            f"{timing}; times are training seconds (evaluation excluded)")


def _child_environment(jobs: int) -> dict:
    """The environment of each training process: this fastlenet first on the path and,
    when several run at once, one thread each (set before the child imports numpy)."""
    env = dict(os.environ)
    package_root = str(Path(fastlenet.__file__).resolve().parent.parent)
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
    """A finished setting's row fields, from its metrics.json and history.json."""
    result = {"wall_seconds": wall_seconds}
    metrics_path = run_dir / "metrics.json"
    if returncode != 0 or not metrics_path.is_file():
        lines = (run_dir / "train.log").read_text(errors="replace").strip().splitlines()
        reason = lines[-1].removeprefix("fastlenet: error: ") if lines else f"exit status {returncode}"
        return {**result, "status": f"failed: {reason}"}
    metrics = json.loads(metrics_path.read_text())
    epochs = json.loads((run_dir / "history.json").read_text())["epochs"]
    result.update({key: metrics.get(key) for key in ("test_accuracy", "best_val_accuracy",
                                                      "best_epoch", "epochs", "train_seconds")})
    for target in TARGETS:
        reached = [r["train_seconds"] for r in epochs if r["test_accuracy"] >= target]
        result[f"seconds_to_{round(target * 100)}"] = reached[0] if reached else None
    result["status"] = "ok" if metrics["stop_reason"] == "completed" else metrics["stop_reason"]
    return result


def _summary(row: dict) -> str:
    if row.get("test_accuracy") is None:
        return row["status"]
    return f"test {row['test_accuracy']:.2%} after {row['train_seconds']:.1f} s of training"


# ------------------------------------------------------------------ the tables
def _cell(column: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column.endswith("accuracy"):
        return f"{value:.2%}"
    if column.endswith("seconds") or column.startswith("seconds"):
        return f"{value:.1f}"
    return _text(value)


def _titles(swept: list[str]) -> list[str]:
    names = {"test_accuracy": "test acc (last epoch)", "best_val_accuracy": "best val acc",
             "best_epoch": "best epoch", "train_seconds": "train s", "wall_seconds": "wall s",
             **{f"seconds_to_{round(t * 100)}": f"s to {t:.0%} test" for t in TARGETS}}
    return [_option(f) for f in swept] + [names.get(c, c) for c in _COLUMNS]


def write_tables(out: Path, rows: list[dict], swept: list[str], header: str) -> None:
    """sweep.md (for reading) and sweep.csv (raw numbers), each written atomically."""
    columns = [*swept, *_COLUMNS]
    lines = [f"# {header}", "", "| " + " | ".join(_titles(swept)) + " |",
             "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_cell(c, row.get(c)).replace("|", "/") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    with atomic_open(out / "sweep.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    with atomic_open(out / "sweep.csv", "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([c if c in _COLUMNS else _option(c)[2:] for c in columns])
        for row in rows:
            writer.writerow(["" if row.get(c) is None else _text(row.get(c)) for c in columns])


# -------------------------------------------------------------------- the plot
def plot(path: Path, rows: list[dict], out: Path) -> None:
    """Test accuracy against training time for every setting that ran, and each
    setting's last test accuracy as a bar. Raises ImportError without matplotlib."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    fig = Figure(figsize=(12, max(4.5, 0.35 * len(rows) + 1.5)), layout="constrained")
    curves, bars = fig.subplots(1, 2, width_ratios=(3, 2))
    lowest = 100.0
    for row in rows:
        history = out / row["run"] / "history.json"
        if row.get("test_accuracy") is None or not history.is_file():
            continue
        epochs = json.loads(history.read_text())["epochs"]
        accuracy = [100 * r["test_accuracy"] for r in epochs]
        lowest = min(lowest, *accuracy)
        curves.plot([r["train_seconds"] for r in epochs], accuracy, marker="o", ms=3,
                    label=row["run"])
    for target in TARGETS:
        curves.axhline(100 * target, color="grey", lw=0.8, ls="--")
    curves.set(xlabel="training time (s)", ylabel="test accuracy (%)",
               title="Test accuracy after each epoch", ylim=(max(lowest - 1, 0), 100))
    if lowest < 100:
        curves.legend(fontsize=8)
    # every setting gets a bar, a failed one an empty bar and the word "failed"
    finals = [100 * r["test_accuracy"] if r.get("test_accuracy") is not None else None
              for r in rows]
    low = max(min([a for a in finals if a is not None], default=100) - 1, 0)
    bars.barh([r["run"] for r in rows], [a - low if a is not None else 0 for a in finals],
              left=low, color="tab:blue")
    for k, accuracy in enumerate(finals):
        bars.text(accuracy if accuracy is not None else low, k,
                  f" {accuracy:.2f}%" if accuracy is not None else " failed",
                  va="center", fontsize=8)
    bars.set(xlabel="test accuracy after the last epoch (%)", xlim=(low, 100.3),
             title="Last-epoch test accuracy")
    bars.invert_yaxis()
    bars.tick_params(axis="y", labelsize=8)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
