"""Comparing runs: ``fastlenet compare RUN...``.

:func:`compare_runs` tabulates several run folders (``compare.md``, ``compare.csv``) and
overlays their curves (``compare.png``): training loss and validation accuracy against
epochs, test accuracy against training time. Legend entries are the run names plus the
settings in which the runs differ.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from .atomic_write import write_file
from .errors import ConfigError, RunFolderError
from .figures import (log_axis, new_figure, percent_axis, plot_accuracy_over_time, png_bytes,
                      require_matplotlib, run_style, running_mean)
from .runs import NOT_SETTINGS, TARGETS, Run, load_run, setting_text
from .tables import Column, target_columns, write_tables

_COLUMNS = [Column("run", "run"), Column("model", "model"), Column("dataset", "dataset"),
            Column("backend", "backend"),
            Column("optimizer", "optimizer"), Column("lr", "lr", "number"),
            Column("batch", "batch", "number"), Column("epochs", "epochs", "number"),
            Column("best val acc", "best val acc", "percent"),
            Column("test acc", "test acc", "percent"),
            Column("time (s)", "time (s)", "seconds"),
            *target_columns("time to {}% (s)", "time to {:.0%} (s)")]
# the table's columns, which are also the keys of Comparison.rows and the CSV's header
COMPARE_COLUMNS = tuple(c.key for c in _COLUMNS)


@dataclass
class Comparison:
    """What :func:`compare_runs` wrote: ``markdown`` (the table's text), ``rows`` (one dict
    per run, keyed by COMPARE_COLUMNS, raw numbers, None when not reached) and the paths
    ``markdown_path``, ``csv_path``, ``figure_path``."""

    markdown: str
    rows: list[dict]
    markdown_path: Path
    csv_path: Path
    figure_path: Path


def compare_runs(paths: list[str | Path], out: str | Path | None = None) -> Comparison:
    """Tabulate runs (compare.md, compare.csv) and overlay their curves (compare.png) in ``out``
    (default: a new ``comparisons/<time>``). As a sweep's folder, a folder that already
    holds a comparison is refused (ConfigError), never written over.

    Test accuracy is the last epoch's; "best val acc" the highest validation accuracy;
    time counts training only (not evaluation) and time to a target is when the test
    accuracy after an epoch first reached it.
    """
    require_matplotlib()
    if not paths:
        raise RunFolderError("compare needs at least one run folder")
    runs = [load_run(p) for p in paths]
    names = _run_names(runs, paths)
    rows = [_compare_row(run, name) for run, name in zip(runs, names)]
    folder = Path(out) if out is not None else _new_folder()
    if any((folder / f"compare{suffix}").exists() for suffix in (".md", ".csv", ".png")):
        raise ConfigError(f"{folder} already holds a comparison; choose another --out")
    markdown = write_tables(folder / "compare", _COLUMNS, rows)
    labels = [f"{name} ({detail})" if detail else name
              for name, detail in zip(names, _differences(runs))]
    figure_path = write_file(folder / "compare.png", png_bytes(plot_comparison(runs, labels)))
    return Comparison(markdown, rows, folder / "compare.md", folder / "compare.csv", figure_path)


def _new_folder() -> Path:
    """``comparisons/<time>``, numbered when that exists."""
    base = Path("comparisons") / datetime.now().strftime("%Y%m%d-%H%M%S")
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def _run_names(runs: list[Run], paths) -> list[str]:
    """Folder names, or the paths as given where two folders share a name."""
    names = [run.name for run in runs]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, paths)]


def _differences(runs: list[Run]) -> list[str]:
    """For each run, the settings in which the runs differ, e.g. "lr 0.001, batch size 64"."""
    keys = sorted({k for run in runs for k in run.config} - NOT_SETTINGS)
    varying = [k for k in keys if len({json.dumps(run.config.get(k)) for run in runs}) > 1]
    return [", ".join(f"{k.replace('_', ' ')} {setting_text(run.config.get(k))}" for k in varying)
            for run in runs]


def _compare_row(run: Run, name: str) -> dict:
    config, last = run.config, run.epochs[-1]
    best = run.best_epoch()
    row = {"run": name, "model": config.get("model"), "dataset": config.get("dataset"),
           "backend": config.get("backend"),
           "optimizer": config.get("optimizer"), "lr": config.get("lr"),
           "batch": config.get("batch_size"), "epochs": last["epoch"],
           "best val acc": None if best is None else best["val_accuracy"],
           "test acc": last["test_accuracy"], "time (s)": run.train_seconds}
    for target in TARGETS:
        reached = run.time_to(target)
        row[f"time to {round(target * 100)}% (s)"] = None if reached is None else reached[0]
    return row


def plot_comparison(runs: list[Run], labels: list[str]):
    """Training loss and validation accuracy against epochs, and test accuracy against
    training time, one colour per run, one legend below."""
    columns = 1 if len(runs) <= 3 else 2  # of the legend
    fig = new_figure((16, 5.2 + 0.3 * math.ceil(len(runs) / columns)))
    ax_loss, ax_val, ax_time = fig.subplots(1, 3)
    for n, run in enumerate(runs):
        style = run_style(n)
        steps = run.history["steps"]
        if steps:
            losses = np.array([s["loss"] for s in steps], dtype=float)
            window = max(1, min(round(run.steps_per_epoch / 5), len(losses)))
            at = np.array([s["step"] for s in steps], dtype=float)[window - 1:] / run.steps_per_epoch
            ax_loss.plot(at, running_mean(losses, window), lw=1.6, **style)
        epochs = [r["epoch"] for r in run.epochs]
        val = [r["val_accuracy"] for r in run.epochs]
        if all(v is not None for v in val):
            ax_val.plot(epochs, [100 * v for v in val], marker="o", ms=5, lw=1.6, **style)
    plot_accuracy_over_time(ax_time, runs, labels)
    log_axis(ax_loss)
    ax_loss.set(xlabel="epoch", ylabel="training loss (running mean, log scale)",
                title="Training loss")
    ax_val.set(xlabel="epoch", ylabel="validation accuracy", title="Validation accuracy")
    ax_val.xaxis.set_major_locator(require_matplotlib().ticker.MaxNLocator(integer=True))
    percent_axis(ax_val)
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
    fig.legend(*ax_time.get_legend_handles_labels(), loc="outside lower center",
               ncols=columns, fontsize=10)
    fig.suptitle(f"Comparison of {len(runs)} runs", fontsize=13)
    return fig
