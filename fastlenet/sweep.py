"""Grid sweeps: train every combination of some options, then tabulate and plot them.

Each setting has its own run folder, ``<sweep>/<option>-<value>_.../``, trained by a
runner: on this machine, ``jobs`` processes at a time (fastlenet.sweep_local), or as one
task each on a Dask cluster (fastlenet.sweep_dask). A setting that fails (diverges, bad
data, a crash) becomes a row saying why; the others go on. Each setting's row is read from
its run folder (fastlenet.sweep_setting), as ``report`` and ``compare`` read theirs.

The sweep folder gets ``sweep.json`` (the grid and each row: what :func:`resume_sweep`
continues from), ``sweep.md`` and ``sweep.csv`` (all rewritten atomically whenever a
setting starts or ends, so they are never half-written and show progress), and
``sweep.png``, test accuracy against training time per setting, when matplotlib is
installed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Callable

from . import tables
from .version import __version__
from .atomic_write import write_file
from .checks import is_integer, is_real
from .config import TrainConfig, option_name
from .errors import ConfigError, FastLeNetError
from .figures import (PLOTS_HINT, new_figure, plot_accuracy_over_time, plot_last_accuracy,
                      png_bytes, require_matplotlib)
from .folder_lock import FolderLock
from .runs import load_run
from .sweep_local import run_local
from .sweep_setting import (UNFINISHED, Setting, run_result, setting_name, settings, summary,
                            train_arguments)
from .tables import Column, target_columns

DEFAULT_CLUSTER_TIMEOUT = 30.0  # seconds to reach a Dask scheduler and to see a worker
# the table's columns after the swept options
_COLUMNS = [Column("status", "status"), Column("test_accuracy", "test acc (last epoch)", "percent"),
            Column("best_val_accuracy", "best val acc", "percent"),
            Column("best_epoch", "best epoch", "number"), Column("epochs", "epochs", "number"),
            Column("train_seconds", "train s", "seconds"), *target_columns(),
            Column("wall_seconds", "wall s", "seconds"), Column("run", "run")]
_print = functools.partial(print, flush=True)  # progress shows as it happens, piped too


def run_sweep(grid: dict[str, list], fixed: dict | None = None, out: str | Path | None = None,
              jobs: int = 1, log: Callable[[str], None] | None = _print, cluster: str | None = None,
              cluster_timeout: float = DEFAULT_CLUSTER_TIMEOUT) -> list[dict]:
    """Train every setting of ``grid`` (TrainConfig field -> values) with the ``fixed``
    fields, ``jobs`` at a time here, or on the Dask cluster ``cluster`` names
    (``tcp://host:port``, or ``local:N`` for N worker processes started here); return one
    row per setting (also in sweep.md/.csv).

    Every setting is checked with TrainConfig before anything trains, so a bad value is
    one ConfigError naming the option. ``cluster_timeout``: seconds to reach the scheduler
    and to wait for a worker before giving up (ClusterError, one line).
    """
    fixed = dict(fixed or {})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for field in [*grid, *fixed]:
        if field not in known:
            raise ConfigError(f"unknown train option '{field}' in the sweep")
    for field, values in grid.items():
        if not values:
            raise ConfigError(f"{option_name(field)} in the sweep has no values")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{option_name(field)} lists a value twice in the sweep")
    _check_runner(jobs, cluster, cluster_timeout)
    combos = settings(grid)
    for values in combos:
        TrainConfig(**{**fixed, **values}).validate()
    out = Path(out) if out is not None else Path("sweeps") / datetime.now().strftime("%Y%m%d-%H%M%S")

    def new_record() -> dict:
        if (out / "sweep.json").exists() or (out / "sweep.csv").exists():
            raise ConfigError(f"{out} already holds a sweep; continue it with --resume {out}, "
                              "or choose another --out")
        rows = [{**values, "status": "pending", "run": setting_name(values)} for values in combos]
        return {"fastlenet": __version__, "grid": grid, "fixed": fixed, "rows": rows}

    return _run(out, new_record, jobs, cluster, cluster_timeout, log or (lambda _msg: None),
                new=True)


def resume_sweep(out: str | Path, jobs: int = 1, log: Callable[[str], None] | None = _print,
                 cluster: str | None = None,
                 cluster_timeout: float = DEFAULT_CLUSTER_TIMEOUT) -> list[dict]:
    """Continue the sweep in ``out``: rows that ended are kept, settings whose run folder
    holds a checkpoint resume from it, the others start; runners as in :func:`run_sweep`."""
    out = Path(out)
    _check_runner(jobs, cluster, cluster_timeout)

    def saved_record() -> dict:
        record = _read_record(out)
        for row in record["rows"]:  # ended after the record was last written
            if row["status"] in UNFINISHED and (out / row["run"] / "metrics.json").is_file():
                row.update(run_result(out / row["run"], 0, None))
        return record

    return _run(out, saved_record, jobs, cluster, cluster_timeout, log or (lambda _msg: None),
                new=False)


def _check_runner(jobs, cluster: str | None, timeout) -> None:
    if not is_integer(jobs) or jobs < 1:
        raise ConfigError(f"--jobs must be an integer >= 1, got {jobs!r}")
    if cluster is None:
        return
    if jobs != 1:
        raise ConfigError("--jobs is for sweeps on this machine; on a cluster (--cluster) its "
                          "workers' threads set how many settings train at once")
    if not is_real(timeout) or timeout <= 0:
        raise ConfigError(f"--cluster-timeout must be a positive number of seconds, got {timeout!r}")
    from .sweep_dask import check_address

    check_address(cluster)


def _run(out: Path, load_record: Callable[[], dict], jobs: int, cluster: str | None,
         timeout: float, log: Callable[[str], None], new: bool) -> list[dict]:
    """Train the unfinished rows of the record ``load_record`` makes (or reads) with the
    runner chosen, then write the tables and the plot. The record is made once to refuse
    early and see what is to do, then again under the folder's lock, which one sweep holds
    at a time. The cluster is reached before a new sweep folder is made, so a failure to
    reach it leaves nothing behind."""
    record = load_record()
    if cluster is not None and any(row["status"] in UNFINISHED for row in record["rows"]):
        from .sweep_dask import connect, run_on_cluster

        opened = connect(cluster, timeout, log)
    else:
        opened = nullcontext()
    with opened as client:
        if new:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create the sweep folder {out}: {exc.strerror}; "
                                  "choose another --out") from None
        with FolderLock(out, "sweep"):
            record = load_record()  # as it is now that no other sweep writes the folder
            rows, grid = record["rows"], record["grid"]
            todo = [Setting(i, {**record["fixed"], **{f: row[f] for f in grid}}, out / row["run"])
                    for i, row in enumerate(rows) if row["status"] in UNFINISHED]
            progress = _Progress(out, record, _header(grid, record["fixed"], jobs, cluster), log)
            runner = ("on the Dask cluster" if client is not None else
                      f"{jobs} at a time" if jobs > 1 else "one at a time")
            log(f"sweep of {len(rows)} settings in {out}: {len(todo)} to train, {runner}"
                + (f"; {len(rows) - len(todo)} kept from before" if not new else ""))
            for setting in todo:
                rows[setting.index]["status"] = "pending"
            progress.save()
            try:
                if client is not None and todo:
                    run_on_cluster(client, todo, progress, timeout)
                else:
                    run_local(todo, jobs, progress)
            except BaseException as exc:  # Ctrl-C included: keep what finished, say how to go on
                for row in rows:
                    if row["status"] == "running":
                        row["status"] = "interrupted"
                progress.save()
                hint = f"continue the sweep with: fastlenet sweep --resume {out}"
                if isinstance(exc, FastLeNetError):
                    raise type(exc)(f"{exc}; {hint}") from None
                log(f"stopped; {hint}")
                raise
            try:
                require_matplotlib()
            except FastLeNetError:
                log(f"table in {out / 'sweep.md'} and {out / 'sweep.csv'}; the comparison plot "
                    f"needs matplotlib: {PLOTS_HINT}")
            else:
                plot(out / "sweep.png", rows, out)
                log(f"table in {out / 'sweep.md'} and {out / 'sweep.csv'}, plot in "
                    f"{out / 'sweep.png'}")
    return rows


class _Progress:
    """What the runners report to: each setting's start and end, one line each with the
    settings done, running and pending; the record and tables rewritten at each."""

    def __init__(self, out: Path, record: dict, header: str, log: Callable[[str], None]):
        self.out, self.record, self.header, self.log = out, record, header, log
        self.rows = record["rows"]

    def started(self, index: int, where: str) -> None:
        row = self.rows[index]
        again = row["status"] == "running"  # its worker was lost; Dask started it again
        row["status"] = "running"
        self.save()
        self.log(f"{self.counts()} {row['run']}: {'restarted' if again else 'started'} on {where}")

    def finished(self, index: int, fields: dict) -> None:
        row = self.rows[index]
        row.update(fields)
        self.save()
        self.log(f"{self.counts()} {row['run']}: {summary(row)}")

    def counts(self) -> str:
        statuses = [row["status"] for row in self.rows]
        running = statuses.count("running")
        pending = sum(status in UNFINISHED for status in statuses) - running
        done = len(statuses) - running - pending
        return f"[{done}/{len(statuses)} done, {running} running, {pending} pending]"

    def save(self) -> None:
        write_file(self.out / "sweep.json", json.dumps(self.record, indent=1) + "\n")
        write_tables(self.out, self.rows, list(self.record["grid"]), self.header)


def _read_record(out: Path) -> dict:
    """sweep.json of the sweep in ``out``, checked; ConfigError (one line) when it is
    missing or damaged."""
    file = out / "sweep.json"
    if not file.is_file():
        why = ("it was made by an older fastlenet, which kept no sweep.json"
               if (out / "sweep.csv").is_file() else "no sweep.json there")
        raise ConfigError(f"{out}: not a sweep that can be resumed ({why}); pass the folder "
                          "of a sweep, its --out")
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
        grid, rows = record["grid"], record["rows"]
        ok = (isinstance(grid, dict) and isinstance(record["fixed"], dict) and isinstance(rows, list)
              and all(isinstance(r, dict) and isinstance(r.get("status"), str)
                      and isinstance(r.get("run"), str) and set(grid) <= set(r) for r in rows))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ConfigError(f"{file}: damaged (not the record 'fastlenet sweep' writes); the "
                          "sweep cannot be resumed")
    return record


def _header(grid: dict, fixed: dict, jobs: int, cluster: str | None) -> str:
    swept = ", ".join(option_name(f) for f in grid) or "nothing"
    others = " ".join(train_arguments(fixed)) or "the defaults"
    if cluster is not None:
        timing = (f"settings trained as Dask tasks on {cluster}, one thread each: their times "
                  "compete for their workers' CPUs")
    elif jobs > 1:
        timing = (f"{jobs} settings trained at once, one thread each: their times compete for "
                  "the CPU")
    else:
        timing = "one setting at a time"
    return (f"fastlenet {__version__} sweep over {swept}; other options: {others}; "
            f"{timing}; times are training seconds (evaluation excluded)")


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
