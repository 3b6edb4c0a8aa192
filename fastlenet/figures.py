"""Drawing the figures of ``report``, ``compare`` and ``sweep``.

They are drawn with matplotlib's object API (``matplotlib.figure.Figure``, rendered by
Agg); matplotlib is imported only when a figure is made, so ``import fastlenet`` does not
need it, and pyplot's global state is never touched.
"""

from __future__ import annotations

import io

import numpy as np

from .errors import FastLeNetError
from .runs import TARGETS, Run

PLOTS_HINT = 'pip install "fastlenet[plots]"'
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


def percent_axis(ax, axis: str = "y") -> None:
    """Label an axis ("x" or "y") of accuracies in percent: "98.5%"."""
    getattr(ax, f"{axis}axis").set_major_formatter(
        require_matplotlib().ticker.FuncFormatter(lambda v, _: f"{v:g}%"))


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


def plot_last_accuracy(ax, labels: list[str], accuracies: list[float | None],
                       notes: list[str]) -> None:
    """Each setting's last-epoch test accuracy (a fraction, or None with ``notes``' word,
    e.g. "diverged") as a dot on its row, coloured as its line in
    :func:`plot_accuracy_over_time` (the n-th setting with an accuracy has run_style(n)).
    Dots, not bars: a bar cut off near the lowest accuracy reads as empty."""
    shown = [100 * a for a in accuracies if a is not None]
    low = max(min(shown, default=100) - 2, 0)
    n = 0
    for k, (accuracy, note) in enumerate(zip(accuracies, notes)):
        ax.axhline(k, color="#dddddd", lw=0.8, zorder=0)
        if accuracy is None:
            ax.text(low, k, f" {note}", va="center", fontsize=8, color="dimgray")
            continue
        ax.plot([100 * accuracy], [k], "o", ms=8, color=run_style(n)["color"])
        ax.annotate(f"{100 * accuracy:.2f}%", (100 * accuracy, k), xytext=(6, 0),
                    textcoords="offset points", va="center", fontsize=8)
        n += 1
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # the first setting on top, as in the table
    ax.set_xlim(low, 100 + 0.12 * (100 - low))  # room for the last label
    percent_axis(ax, "x")
    ax.grid(axis="x", alpha=0.3)
    ax.set(xlabel="test accuracy after the last epoch", title="Last-epoch test accuracy")
    ax.tick_params(axis="y", labelsize=8)

