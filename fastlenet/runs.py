"""Run folders: reading what ``fastlenet train`` wrote, and the measures, tables and the
accuracy-over-time plot that ``report``, ``compare`` and ``sweep`` share.

A run folder holds ``config.json`` (the TrainConfig), ``history.json`` (one record per
step and one per epoch), ``metrics.json`` once the run has ended, and the checkpoints.
Everything here reads only the JSON files, so a run still in progress, or one stopped
early, can be tabulated and plotted too.

Tables are written twice, for reading (Markdown) and for analysis (CSV, raw numbers), both
atomically. Figures are drawn with matplotlib's object API (``matplotlib.figure.Figure``,
rendered by Agg); matplotlib is imported only when a figure is made, so ``import
fastlenet`` does not need it, and pyplot's global state is never touched.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic_write import write_file
from .checks import is_real
from .errors import FastLeNetError, RunFolderError

TARGETS = (0.97, 0.99)  # test accuracies whose time to reach every table reports
PLOTS_HINT = 'pip install "fastlenet[plots]"'

# config keys that never tell runs apart (in a legend, or a summary's "other settings")
NOT_SETTINGS = {"data_dir", "log_every", "fastlenet", "target_accuracy"}


# ------------------------------------------------------------------ reading a run
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


# ------------------------------------------------------------------ tables
@dataclass(frozen=True)
class Column:
    """A table column: ``key`` of the row dicts, its Markdown ``title``, its CSV header
    (``csv``, default the key) and how a value reads: ``kind`` "text", "number" (right
    aligned), "percent" (a fraction shown as 98.76%) or "seconds" (one decimal)."""

    key: str
    title: str
    kind: str = "text"
    csv: str | None = None

    def cell(self, value) -> str:
        """The value as the Markdown table shows it; "-" for none (or NaN)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if self.kind == "percent":
            return f"{value:.2%}"
        if self.kind == "seconds":
            return f"{value:.1f}"
        return raw_text(value)


def raw_text(value) -> str:
    """A value as the CSV holds it: flags as on/off, None as empty, numbers unrounded."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def target_columns(key: str = "seconds_to_{}", title: str = "s to {:.0%} test") -> list[Column]:
    """One "seconds" column per accuracy target (rows fill them from :meth:`Run.time_to`)."""
    return [Column(key.format(round(t * 100)), title.format(t), "seconds") for t in TARGETS]


def markdown_table(columns: list[Column], rows: list[dict]) -> str:
    """A Markdown table, numbers right-aligned; '|' inside a cell is escaped."""
    lines = ["| " + " | ".join(c.title for c in columns) + " |",
             "|" + "|".join("---" if c.kind == "text" else "---:" for c in columns) + "|"]
    for row in rows:
        cells = (c.cell(row.get(c.key)).replace("|", "\\|") for c in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_table(columns: list[Column], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([c.csv or c.key for c in columns])
    for row in rows:
        writer.writerow([raw_text(row.get(c.key)) for c in columns])
    return buffer.getvalue()


def write_tables(stem: Path, columns: list[Column], rows: list[dict],
                 heading: str | None = None) -> str:
    """Write ``<stem>.md`` (with ``# heading`` above the table when given) and
    ``<stem>.csv``, each atomically; return the Markdown table."""
    table = markdown_table(columns, rows)
    write_file(stem.with_suffix(".md"), (f"# {heading}\n\n" if heading else "") + table + "\n")
    write_file(stem.with_suffix(".csv"), csv_table(columns, rows))
    return table


# ------------------------------------------------------------------ figures
DPI = 120


def require_matplotlib():
    """The matplotlib module; a one-line FastLeNetError naming the extra when it is absent."""
    try:
        import matplotlib
        import matplotlib.colors  # noqa: F401  (the submodules the figures use)
        import matplotlib.figure  # noqa: F401
        import matplotlib.ticker  # noqa: F401
    except ImportError as exc:
        raise FastLeNetError(f"figures need matplotlib, which is not installed ({exc}); "
                             f"install it with: {PLOTS_HINT}") from None
    return matplotlib


def new_figure(figsize: tuple[float, float]):
    return require_matplotlib().figure.Figure(figsize=figsize, dpi=DPI, layout="constrained")


def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def percent_axis(ax) -> None:
    """Label a y axis of accuracies in percent: "98.5%"."""
    ax.yaxis.set_major_formatter(require_matplotlib().ticker.FuncFormatter(lambda v, _: f"{v:g}%"))


def log_axis(ax) -> None:
    """A log-scale y axis labelled with plain numbers (0.1, 0.2, 0.5, 1), not powers of ten;
    call it after plotting, as the labels depend on the data's range."""
    ticker = require_matplotlib().ticker
    ax.set_yscale("log")
    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    low, high = ax.get_ylim()
    if high / low < 30:  # under ~1.5 decades the powers of ten alone are too few labels
        ax.yaxis.set_minor_locator(ticker.LogLocator(subs=(2, 3, 5)))
        ax.yaxis.set_minor_formatter(plain)
    else:
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each ``window`` consecutive values: (n,) -> (n - window + 1,)."""
    sums = np.cumsum(np.concatenate([[0.0], values]))
    return (sums[window:] - sums[:-window]) / window


def run_style(n: int) -> dict:
    """Colour and line style of the n-th run in a figure: past ten the colours repeat,
    dashed."""
    return {"color": f"C{n % 10}", "ls": "-" if n < 10 else "--"}


def plot_accuracy_over_time(ax, runs: list[Run], labels: list[str]) -> None:
    """Test accuracy after each epoch against training time, one line per run, with the
    accuracy targets that some run comes near as dotted lines."""
    lowest = best = None
    for n, (run, label) in enumerate(zip(runs, labels)):
        accuracy = [100 * r["test_accuracy"] for r in run.epochs]
        lowest = min(accuracy) if lowest is None else min(lowest, *accuracy)
        best = max(accuracy) if best is None else max(best, *accuracy)
        ax.plot([r["train_seconds"] for r in run.epochs], accuracy, marker="s", ms=5, lw=1.6,
                label=label, **run_style(n))
    for target in TARGETS:
        if best is not None and 100 * target <= best + 0.5:  # a line far above every curve
            ax.axhline(100 * target, color="gray", lw=0.8, ls=":")  # would squash them
            ax.annotate(f"{target:.0%}", (0.01, 100 * target), xycoords=("axes fraction", "data"),
                        ha="left", va="bottom", fontsize=8, color="gray")
    if lowest is not None:
        ax.set_ylim(max(lowest - 1, 0), min(100, best + 0.5) + 0.2)
    percent_axis(ax)
    ax.grid(alpha=0.3)
    ax.set(xlabel="training time (s)", ylabel="test accuracy",
           title="Test accuracy against training time")
