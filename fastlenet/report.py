"""Reports on training runs: figures, one HTML page, and tables comparing runs.

:func:`make_report` evaluates a run's ``best.npz`` on the test set of the data the run
was trained on (its dataset, data folder and normalisation constants) and writes, by
default into ``RUN/report/``:

| file | what it shows |
|---|---|
| ``summary.png`` | model, parameters, data, backend, optimizer, epochs, time, accuracies |
| ``curves.png`` | loss and accuracy (train, validation, test) against steps and epochs |
| ``confusion.png`` | the test confusion matrix (counts) with per-class accuracy |
| ``misclassified.png`` | the most confident mistakes: image, true label, prediction, probability |
| ``samples.png`` | a 3x3 grid of random (seeded) test images with predictions |
| ``filters.png`` | the first convolution's filters |
| ``feature_maps.png`` | one test image's maps after every convolution and pooling layer |
| ``report.html`` | one self-contained page: the summary table and every figure embedded, |
|  | each linking its PNG |

:func:`compare_runs` overlays the curves of several runs (``compare.png``) and tabulates
them (``compare.md``, ``compare.csv``).

Figures are drawn with matplotlib's object API (``matplotlib.figure.Figure``, rendered
to PNG by Agg). Matplotlib is imported only when a figure is made, so ``import
fastlenet`` does not need it; no window ever opens and pyplot's global state is left
alone. Every file is written atomically.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .checkpoint import atomic_open, load_model, load_test_set
from .checks import is_integer, is_real
from .errors import ConfigError, FastLeNetError, RunFolderError
from .nn import AvgPool2d, Conv2d, MaxPool2d

DPI = 120
TARGETS = (0.97, 0.99)  # test accuracies whose time to reach the tables report
MISTAKES_GRID = (4, 8)  # rows, columns of misclassified.png
MAPS_PER_ROW = 16  # feature maps per row of feature_maps.png
PLOTS_HINT = 'pip install "fastlenet[plots]"'

# file stem -> (heading, caption) for report.html, in page order
FIGURES = {
    "summary": ("Summary", "The run at a glance (also as the table above)."),
    "curves": ("Loss and accuracy",
               "Training loss at every step (and its running mean), and train, validation and "
               "test loss and accuracy after every epoch; the bottom axis counts steps, the top "
               "one epochs. Train accuracy is the running accuracy during the epoch, while the "
               "weights still change; validation and test are measured after it. When the first "
               "epochs stretch the accuracy axis, an inset zooms on the later ones."),
    "confusion": ("Confusion matrix",
                  "Test images by true class (rows) and predicted class (columns), counted; "
                  "the right axis gives each class's accuracy (recall). Colours are on a log "
                  "scale, so single mistakes show."),
    "misclassified": ("Misclassified test images",
                      "The test images best.npz gets wrong, most confident mistakes first: "
                      "index in the test set, true label, prediction and its probability."),
    "samples": ("Random test images",
                "Nine test images drawn at random (seeded) with best.npz's prediction and "
                "probability; green when right, red when wrong."),
    "filters": ("First convolution's filters",
                "The learned weights of the first convolution, one tile per filter (and "
                "input channel), on one colour scale: red positive, blue negative."),
    "feature_maps": ("Feature maps",
                     "One test image (top, as the network sees it: padded to 32x32 and "
                     "normalised) and the maps it produces after every convolution and "
                     "pooling layer, each map on its own colour scale (yellow high, purple low). A "
                     "convolution's maps are its raw output, before any batch norm or activation."),
}


# ------------------------------------------------------------------- run folders
@dataclass
class Run:
    """A run folder as read from disk.

    ``config``: config.json; ``history``: history.json (``steps``: one record per step,
    ``epochs``: one per epoch, at least one). Everything reported comes from these two and
    best.npz, which training rewrites every epoch, so a run still in progress or stopped
    early can be reported too.
    """

    path: Path
    config: dict
    history: dict

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
        """Training seconds and epoch at which test accuracy first reached ``target``."""
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
    return Run(path, config, history)


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


# ------------------------------------------------------------------- matplotlib
def require_matplotlib():
    """The matplotlib module; a one-line FastLeNetError naming the extra when it is absent."""
    try:
        import matplotlib
        import matplotlib.colors  # noqa: F401  (the submodules the figures use)
        import matplotlib.figure  # noqa: F401
        import matplotlib.ticker  # noqa: F401
    except ImportError as exc:
        raise FastLeNetError(f"reports need matplotlib, which is not installed ({exc}); "
                             f"install it with: {PLOTS_HINT}") from None
    return matplotlib


def _figure(figsize: tuple[float, float]):
    return require_matplotlib().figure.Figure(figsize=figsize, dpi=DPI, layout="constrained")


def _png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _write(path: Path, data: bytes | str) -> Path:
    """Write bytes, or text as UTF-8, atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def _percent_axis(ax) -> None:
    """Label a y axis of accuracies in percent: "98.5%"."""
    ax.yaxis.set_major_formatter(require_matplotlib().ticker.FuncFormatter(lambda v, _: f"{v:g}%"))


def _log_axis(ax) -> None:
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


def _probability(p: float) -> str:
    """A probability for a label; never rounds a sure-looking 99.96% up to 100%."""
    return f"{p:.1%}" if p < 0.999 else ">99.9%"


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each ``window`` consecutive values: (n,) -> (n - window + 1,)."""
    sums = np.cumsum(np.concatenate([[0.0], values]))
    return (sums[window:] - sums[:-window]) / window


# ------------------------------------------------------------------- figures
def plot_curves(run: Run, title: str):
    """Loss (log scale) and accuracy of a run against steps (bottom axis) and epochs (top)."""
    ticker = require_matplotlib().ticker
    epochs, spe = run.epochs, run.steps_per_epoch
    ends = np.array([r["step"] for r in epochs], dtype=float)
    steps = np.array([s["step"] for s in run.history["steps"]], dtype=float)
    losses = np.array([s["loss"] for s in run.history["steps"]], dtype=float)

    fig = _figure((13, 5))
    ax_loss, ax_acc = fig.subplots(1, 2)
    if len(steps):
        ax_loss.plot(steps, losses, color="C0", alpha=0.25, lw=0.8, label="train, each step")
        window = max(1, round(spe / 5))
        if len(losses) >= 2 * window:
            ax_loss.plot(steps[window - 1:], _running_mean(losses, window), color="C0", lw=1.6,
                         label=f"train, mean of {window} steps")
    series = [("validation", "val", "C1", "o"), ("test", "test", "C2", "s")]
    for label, key, color, marker in series:
        values = [r[f"{key}_loss"] for r in epochs]
        if all(v is not None for v in values):
            ax_loss.plot(ends, values, marker=marker, color=color, label=f"{label}, after each epoch")
    _log_axis(ax_loss)
    ax_loss.set_ylabel("cross-entropy loss (log scale)")
    ax_loss.set_title("Loss")

    ax_acc.plot(ends, [100 * r["train_accuracy"] for r in epochs], marker="^", color="C0",
                label="train (running, during the epoch)")
    for label, key, color, marker in series:
        values = [r[f"{key}_accuracy"] for r in epochs]
        if all(v is not None for v in values):
            ax_acc.plot(ends, [100 * v for v in values], marker=marker, color=color, label=label)
    best = run.best_epoch()
    if best is not None:
        ax_acc.plot(best["step"], 100 * best["val_accuracy"], marker="*", ms=16, color="C1",
                    mec="black", ls="none",
                    label=f"best validation {best['val_accuracy']:.2%} (epoch {best['epoch']}): best.npz")
    _percent_axis(ax_acc)
    _zoom_late_epochs(ax_acc, epochs, series)
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_title(f"Accuracy (last epoch: test {epochs[-1]['test_accuracy']:.2%})")
    ax_acc.legend(loc="lower right", fontsize=9)
    ax_loss.legend(loc="upper right", fontsize=9)
    for ax in (ax_loss, ax_acc):
        ax.set_xlim(0, ends[-1] * 1.03)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        top = ax.secondary_xaxis("top", functions=(lambda s: s / spe, lambda e: e * spe))
        top.set_xlabel("epoch")
        top.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=13)
    return fig


def _zoom_late_epochs(ax, epochs: list[dict], series) -> None:
    """An inset with validation and test accuracy over the second half of the epochs, when
    the first epochs stretch the axis so far that their last percent cannot be read."""
    late = epochs[len(epochs) // 2:]
    values = [100 * r[f"{key}_accuracy"] for r in late for _, key, _, _ in series
              if r[f"{key}_accuracy"] is not None]
    low, high = ax.get_ylim()
    if len(epochs) < 4 or not values or (max(values) - min(values)) * 6 > high - low:
        return
    inset = ax.inset_axes((0.4, 0.38, 0.56, 0.3))
    for _, key, color, marker in series:
        if all(r[f"{key}_accuracy"] is not None for r in late):
            inset.plot([r["epoch"] for r in late], [100 * r[f"{key}_accuracy"] for r in late],
                       marker=marker, ms=4, color=color)
    inset.xaxis.set_major_locator(require_matplotlib().ticker.MaxNLocator(integer=True))
    margin = 0.15 * (max(values) - min(values)) + 0.02
    inset.set_ylim(min(values) - margin, max(values) + margin)
    _percent_axis(inset)
    inset.tick_params(labelsize=8)
    inset.grid(alpha=0.3)
    inset.set_title("validation and test, late epochs (zoomed)", fontsize=8)
    inset.set_xlabel("epoch", fontsize=8, labelpad=1)


def plot_confusion(confusion: np.ndarray, class_names: list[str], title: str):
    """confusion: (K, K) counts, rows true classes, columns predicted."""
    mpl = require_matplotlib()
    k = len(class_names)
    support = confusion.sum(axis=1)
    recall = confusion.diagonal() / np.maximum(support, 1)
    fig = _figure((9, 7.6))
    ax = fig.subplots()
    norm = mpl.colors.LogNorm(vmin=1, vmax=max(int(confusion.max()), 2))
    cmap = mpl.colormaps["Blues"].with_extremes(bad="white")
    ax.imshow(np.ma.masked_equal(confusion, 0), cmap=cmap, norm=norm)
    for i, j in zip(*np.nonzero(confusion)):
        value = int(confusion[i, j])
        ax.text(j, i, f"{value:,}", ha="center", va="center", fontsize=9 if k <= 10 else 7,
                color="white" if norm(value) > 0.6 else "black",
                fontweight="bold" if i == j else "normal")
    long_names = max(len(n) for n in class_names) > 2
    ax.set_xticks(range(k), class_names, rotation=40 if long_names else 0,
                  ha="right" if long_names else "center")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    right = ax.secondary_yaxis("right")
    right.set_yticks(range(k), [f"{r:.1%} of {n:,}" for r, n in zip(recall, support)])
    right.set_ylabel("per-class accuracy (recall)")
    ax.set_title(title, fontsize=12)
    return fig


def plot_misclassified(images: np.ndarray, labels: np.ndarray, proba: np.ndarray,
                       class_names: list[str]):
    """images: (N, H, W) uint8 test images; labels (N,); proba (N, K) predicted probabilities.
    The most confident mistakes first, up to MISTAKES_GRID's rows x columns."""
    rows, cols = MISTAKES_GRID
    preds = proba.argmax(axis=1)
    wrong = np.flatnonzero(preds != labels)
    shown = wrong[np.argsort(-proba[wrong, preds[wrong]], kind="stable")][:rows * cols]
    fig = _figure((cols * 1.55, rows * 1.9 + 0.5))
    axes = fig.subplots(rows, cols)
    for ax in axes.flat:
        ax.set_axis_off()
    # names like Fashion-MNIST's "Ankle boot" need a line of their own to fit a tile
    sep = "\n" if max(len(n) for n in class_names) > 3 else " "
    for ax, i in zip(axes.flat, shown):
        ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(f"#{i}  true {class_names[labels[i]]}\npred {class_names[preds[i]]}{sep}"
                     f"({_probability(proba[i, preds[i]])})", fontsize=9, color="#b71c1c")
    n = len(labels)
    if wrong.size:
        more = f"; the {len(shown)} most confident shown" if len(shown) < wrong.size else ""
        title = f"Misclassified test images: {wrong.size:,} of {n:,} ({wrong.size / n:.2%}){more}"
    else:
        title = f"Misclassified test images: none of {n:,}"
        fig.text(0.5, 0.5, "every test image is classified correctly", ha="center", fontsize=14)
    fig.suptitle(title, fontsize=13)
    return fig


def plot_samples(images: np.ndarray, labels: np.ndarray, proba: np.ndarray,
                 class_names: list[str], picks: np.ndarray, seed: int):
    """A 3x3 grid of the test images ``picks`` (9 indices) with predictions."""
    fig = _figure((7, 8))
    right = 0
    for ax, i in zip(fig.subplots(3, 3).flat, picks):
        pred = int(proba[i].argmax())
        ok = pred == labels[i]
        right += ok
        ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"predicted {class_names[pred]} ({_probability(proba[i, pred])})\ntrue "
                     f"{class_names[labels[i]]}  (#{i})", fontsize=10,
                     color="#1b5e20" if ok else "#b71c1c")
    fig.suptitle(f"Nine random test images (seed {seed}): {right} of 9 right", fontsize=13)
    return fig


def plot_filters(weight: np.ndarray, layer: str):
    """weight: (K, C, KH, KW) of a convolution; one tile per filter and input channel."""
    n_filters, n_channels, kh, kw = weight.shape
    tiles = weight.reshape(n_filters * n_channels, kh, kw)
    cols = min(len(tiles), 8)
    rows = math.ceil(len(tiles) / cols)
    fig = _figure((cols * 1.7 + 1.4, rows * 1.8 + 0.9))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    limit = float(np.abs(weight).max()) or 1.0
    for t, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if t >= len(tiles):
            ax.set_axis_off()
            continue
        image = ax.imshow(tiles[t], cmap="RdBu_r", vmin=-limit, vmax=limit)
        k, c = divmod(t, n_channels)
        ax.set_title(f"filter {k}" if n_channels == 1 else f"filter {k}, input {c}", fontsize=10)
    fig.colorbar(image, ax=axes.tolist(), shrink=0.85, label="weight")
    fig.suptitle(f"First convolution's filters: {layer}, {n_filters} filters of {kh}x{kw}",
                 fontsize=13)
    return fig


def feature_maps(model, image: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """One preprocessed image (C, H, W) through ``model`` (eval mode), layer by layer.

    Returns ``[(layer description, maps (C, H, W) host array)]`` for every convolution
    and pooling layer, in order.
    """
    backend = model.backend
    x = backend.to_batch_last(backend.asarray(image[None], dtype=model.dtype))
    was_training = model.training
    model.eval()
    found = []
    try:
        for index, layer in enumerate(model.layers):
            x = layer.forward(x)
            if isinstance(layer, (Conv2d, MaxPool2d, AvgPool2d)):
                maps = backend.to_numpy(backend.from_batch_last(x))[0]
                found.append((f"layer {index}: {layer!r}", maps))
    finally:
        model.train(was_training)
    return found


def plot_feature_maps(image: np.ndarray, caption: str, maps: list[tuple[str, np.ndarray]]):
    """image: the (1, H, W) network input; maps: from :func:`feature_maps`.

    One band per layer, MAPS_PER_ROW maps a row; maps of 1x1 (a convolution to single
    values, like LeNet-5's C5) are drawn as one strip of values.
    """
    # bands of (kind, label, maps, rows of map tiles); the input is drawn twice as large
    bands = [("input", "input: " + caption, image[:1], 2)]
    for label, m in maps:
        c, h, w = m.shape
        if h * w == 1:
            bands.append(("strip", f"{label}: {c} maps of 1x1, as one strip", m.reshape(1, c), 1))
        else:
            bands.append(("maps", f"{label}: {c} maps of {h}x{w}", m, math.ceil(c / MAPS_PER_ROW)))
    tile, title = 0.88, 0.42  # inches per row of maps, per band title
    heights = [rows * tile + title for *_, rows in bands]
    fig = _figure((MAPS_PER_ROW * tile + 0.3, sum(heights) + 0.5))
    for subfig, (kind, label, stack, rows) in zip(
            fig.subfigures(len(bands), 1, height_ratios=heights), bands):
        subfig.suptitle(label, x=0.005, ha="left", fontsize=10)
        if kind == "strip":
            ax = subfig.subplots()
            ax.imshow(stack, cmap="viridis", aspect="auto")
            ax.set_yticks([])
            ax.set_xlabel("map", fontsize=8)
            continue
        shape = (1, MAPS_PER_ROW // 2) if kind == "input" else (rows, MAPS_PER_ROW)
        for j, ax in enumerate(subfig.subplots(*shape, squeeze=False).ravel()):
            if kind == "input" and j == 0:  # framed, so the padding shows
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.set_axis_off()
            if j < len(stack):
                ax.imshow(stack[j], cmap="gray_r" if kind == "input" else "viridis")
                if len(stack) > 1:
                    ax.text(0.02, 0.98, str(j), transform=ax.transAxes, ha="left", va="top",
                            fontsize=7, color="white")
    fig.suptitle("Feature maps after every convolution and pooling layer", fontsize=13)
    return fig


def plot_table(rows: list[tuple[str, str]], title: str):
    """A two-column table (name, value) as a figure."""
    fig = _figure((10, 0.34 * len(rows) + 0.6))
    ax = fig.subplots()
    ax.set_axis_off()
    table = ax.table(cellText=[list(r) for r in rows], cellLoc="left", colWidths=[0.3, 0.7],
                     bbox=(0, 0, 1, 1))
    table.auto_set_font_size(False)
    table.set_fontsize(11)
    for (row, col), cell in table.get_celld().items():
        cell.PAD = 0.02  # of the column's width; the default 0.1 indents the text visibly
        cell.set_edgecolor("#cccccc")
        if col == 0:
            cell.set_text_props(fontweight="bold")
            cell.set_facecolor("#f2f2f2")
    fig.suptitle(title, fontsize=13)
    return fig


# ------------------------------------------------------------------- the report
@dataclass
class Report:
    """What :func:`make_report` wrote: ``folder``, ``html`` (report.html), ``figures``
    (stem -> PNG path, in page order), ``summary`` ((name, value) rows) and the test
    accuracy of best.npz it measured."""

    folder: Path
    html: Path
    figures: dict[str, Path]
    summary: list[tuple[str, str]]
    test_accuracy: float


def make_report(run: str | Path, out: str | Path | None = None, *, backend: str = "auto",
                seed: int = 0, log: Callable[[str], None] | None = print) -> Report:
    """Evaluate ``run``'s best.npz on its test set and write the figures and report.html.

    ``out``: the folder to write (default ``RUN/report``); ``backend``: where best.npz is
    evaluated; ``seed``: chooses the random test images (and the feature maps' input).
    """
    require_matplotlib()
    if not is_integer(seed) or seed < 0:
        raise ConfigError(f"--seed must be an integer >= 0, got {seed!r}")
    log = log or (lambda _msg: None)
    run = load_run(run)
    folder = Path(out) if out is not None else run.path / "report"
    checkpoint = run.path / "best.npz"
    if not checkpoint.is_file():
        raise RunFolderError(f"{run.path}: no best.npz; the run has not finished an epoch, or "
                             "this is not a run folder written by 'fastlenet train'")
    model, meta = load_model(checkpoint, backend)
    x, y, dataset = load_test_set(meta)
    proba = model.predict_proba(x)
    preds = proba.argmax(axis=1)
    accuracy = float((preds == y).mean())
    names = [str(n) for n in meta.get("class_names") or range(model.num_classes)]
    k = model.num_classes
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, preds), 1)
    picks = np.random.default_rng(seed).choice(len(y), size=min(9, len(y)), replace=False)
    config = run.config
    title = (f"{run.name}: {config.get('model')} on {dataset.name}, {config.get('optimizer')} "
             f"lr {config.get('lr')} ({config.get('schedule')}), batch {config.get('batch_size')}, "
             f"{config.get('backend')} backend")
    summary = _summary_rows(run, model, dataset, accuracy, int((preds != y).sum()), len(y))

    first_conv = next(layer for layer in model.layers if isinstance(layer, Conv2d))
    i = int(picks[0])
    caption = (f"test image #{i}, true {names[y[i]]}, predicted {names[preds[i]]} "
               f"({_probability(proba[i, preds[i]])}); 1x32x32 as the network sees it")
    makers = {
        "summary": lambda: plot_table(summary, f"Summary of {run.name}"),
        "curves": lambda: plot_curves(run, title),
        "confusion": lambda: plot_confusion(
            confusion, names, f"Confusion matrix of best.npz on the {dataset.name} test set\n"
            f"{len(y):,} images, accuracy {accuracy:.2%}"),
        "misclassified": lambda: plot_misclassified(dataset.test_images, y, proba, names),
        "samples": lambda: plot_samples(dataset.test_images, y, proba, names, picks, seed),
        "filters": lambda: plot_filters(model.backend.to_numpy(first_conv.weight.data),
                                        repr(first_conv)),
        "feature_maps": lambda: plot_feature_maps(x[i], caption, feature_maps(model, x[i])),
    }
    images, figures = {}, {}
    for stem in FIGURES:
        images[stem] = _png_bytes(makers[stem]())
        figures[stem] = _write(folder / f"{stem}.png", images[stem])
    page = _html_page(run, summary, images, dataset.name, model.backend.name)
    html_path = _write(folder / "report.html", page)
    log(f"report of {run.path}: best.npz scores {accuracy:.2%} on the {dataset.name} test set; "
        f"{len(figures)} figures and {html_path}")
    return Report(folder, html_path, figures, summary, accuracy)


def _summary_rows(run: Run, model, dataset, accuracy: float, mistakes: int, n_test: int):
    config, last = run.config, run.epochs[-1]
    n_val = int(config.get("val_size") or 0)
    n_train = config.get("train_limit") or len(dataset.train_labels) - n_val
    seconds = run.train_seconds
    best = run.best_epoch()
    rows = [
        ("run", str(run.path)),
        ("model", f"{model.name} ({model.num_parameters():,} parameters, {model.dtype.name})"),
        ("data", f"{dataset.name}: {n_train:,} training, {n_val:,} validation, "
                 f"{n_test:,} test images"),
        ("trained on", f"{config.get('backend')} backend, fastlenet {config.get('fastlenet', '?')}"),
        ("optimizer", f"{config.get('optimizer')}, lr {config.get('lr')} ({config.get('schedule')}"
                      f" schedule), batch {config.get('batch_size')}, weight decay "
                      f"{config.get('weight_decay')}, seed {config.get('seed')}"),
        ("epochs", f"{last['epoch']} of {config.get('epochs')} ({last['step']:,} steps)"),
        ("training time", f"{seconds:.1f} s ({seconds / last['epoch']:.1f} s per epoch, "
                          f"{n_train * last['epoch'] / seconds:,.0f} images/s)"),
        ("best validation accuracy", "no validation split" if best is None else
         f"{best['val_accuracy']:.2%} (epoch {best['epoch']}; saved as best.npz)"),
        ("test accuracy of best.npz", f"{accuracy:.2%} ({mistakes:,} of {n_test:,} wrong)"),
        ("test accuracy, last epoch", f"{last['test_accuracy']:.2%}"),
    ]
    for target in TARGETS:
        reached = run.time_to(target)
        rows.append((f"time to {target:.0%} test accuracy", "not reached" if reached is None
                     else f"{reached[0]:.1f} s of training (epoch {reached[1]})"))
    shown = {"model", "backend", "dataset", "epochs", "optimizer", "lr", "schedule",
             "batch_size", "weight_decay", "seed", "val_size", "train_limit", "dtype"}
    others = [f"{k.replace('_', ' ')} {_setting(v)}" for k, v in sorted(config.items())
              if k not in shown | _NOT_SETTINGS and v is not None]
    if others:
        rows.append(("other settings", ", ".join(others)))
    return rows


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1400px; margin: 2em auto; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td { border: 1px solid #ccc; padding: .3em .8em; }
td:first-child { font-weight: bold; background: #f4f4f4; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
nav a { margin-right: 1em; } .caption { color: #555; max-width: 60em; }
"""


def _html_page(run: Run, summary, images: dict[str, bytes], dataset: str, backend: str) -> str:
    """One page with everything inside: images as data URIs (each linking its PNG file)."""
    e = html.escape
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = "\n".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in summary)
    nav = " ".join(f'<a href="#{stem}">{e(FIGURES[stem][0])}</a>' for stem in images)
    sections = []
    for stem, png in images.items():
        heading, caption = FIGURES[stem]
        data = base64.b64encode(png).decode("ascii")
        sections.append(
            f'<section id="{stem}">\n<h2>{e(heading)}</h2>\n<p class="caption">{e(caption)} '
            f'<a href="{stem}.png">{stem}.png</a></p>\n<a href="{stem}.png"><img '
            f'src="data:image/png;base64,{data}" alt="{e(heading)}"></a>\n</section>')
    body = "\n".join(sections)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>fastlenet report: {e(run.name)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>fastlenet report: {e(run.name)}</h1>
<p>Run folder <code>{e(str(run.path.resolve()))}</code>; best.npz evaluated on the {e(dataset)}
test set with the {e(backend)} backend. Made {made} by fastlenet {e(__version__)}.</p>
<nav>{nav}</nav>
<table>
{rows}
</table>
{body}
</body>
</html>
"""


# ------------------------------------------------------------------- comparing runs
COMPARE_COLUMNS = ("run", "model", "backend", "optimizer", "lr", "batch", "epochs",
                   "best val acc", "test acc", "time (s)",
                   *(f"time to {t:.0%} (s)" for t in TARGETS))

# config keys that never tell runs apart in a legend
_NOT_SETTINGS = {"data_dir", "log_every", "fastlenet", "target_accuracy"}


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


def compare_runs(paths: list[str | Path], out: str | Path = "comparison") -> Comparison:
    """Tabulate runs (compare.md, compare.csv) and overlay their curves (compare.png) in ``out``.

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
    folder = Path(out)
    markdown = _markdown(rows)
    md_path = _write(folder / "compare.md", markdown + "\n")
    csv_path = _write(folder / "compare.csv", _csv(rows))
    labels = [f"{name} ({detail})" if detail else name
              for name, detail in zip(names, _differences(runs))]
    figure_path = _write(folder / "compare.png", _png_bytes(plot_comparison(runs, labels)))
    return Comparison(markdown, rows, md_path, csv_path, figure_path)


def _run_names(runs: list[Run], paths) -> list[str]:
    """Folder names, or the paths as given where two folders share a name."""
    names = [run.name for run in runs]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, paths)]


def _differences(runs: list[Run]) -> list[str]:
    """For each run, the settings in which the runs differ, e.g. "lr 0.001, batch size 64"."""
    keys = sorted({k for run in runs for k in run.config} - _NOT_SETTINGS)
    varying = [k for k in keys if len({json.dumps(run.config.get(k)) for run in runs}) > 1]
    return [", ".join(f"{k.replace('_', ' ')} {_setting(run.config.get(k))}" for k in varying)
            for run in runs]


def _setting(value) -> str:
    return "none" if value is None else str(value)


def _compare_row(run: Run, name: str) -> dict:
    config, last = run.config, run.epochs[-1]
    best = run.best_epoch()
    row = {"run": name, "model": config.get("model"), "backend": config.get("backend"),
           "optimizer": config.get("optimizer"), "lr": config.get("lr"),
           "batch": config.get("batch_size"), "epochs": last["epoch"],
           "best val acc": None if best is None else best["val_accuracy"],
           "test acc": last["test_accuracy"], "time (s)": run.train_seconds}
    for target in TARGETS:
        reached = run.time_to(target)
        row[f"time to {target:.0%} (s)"] = None if reached is None else reached[0]
    return row


def _cell(column: str, value) -> str:
    if value is None:
        return "-"
    if "acc" in column:
        return f"{value:.2%}"
    if "(s)" in column:
        return f"{value:.1f}"
    return str(value)


def _markdown(rows: list[dict]) -> str:
    numeric = {c for c in COMPARE_COLUMNS if c not in ("run", "model", "backend", "optimizer")}
    lines = ["| " + " | ".join(COMPARE_COLUMNS) + " |",
             "|" + "|".join("---:" if c in numeric else "---" for c in COMPARE_COLUMNS) + "|"]
    for row in rows:
        cells = (_cell(c, row[c]).replace("|", "\\|") for c in COMPARE_COLUMNS)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COMPARE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


def plot_comparison(runs: list[Run], labels: list[str]):
    """Training loss and validation accuracy against epochs, and test accuracy against
    training time, one colour per run, one legend below."""
    columns = 1 if len(runs) <= 3 else 2  # of the legend
    fig = _figure((16, 5.2 + 0.3 * math.ceil(len(runs) / columns)))
    ax_loss, ax_val, ax_time = fig.subplots(1, 3)
    for n, (run, label) in enumerate(zip(runs, labels)):
        color = f"C{n % 10}"
        style = "-" if n < 10 else "--"  # past ten runs the colours repeat
        steps = run.history["steps"]
        if steps:
            losses = np.array([s["loss"] for s in steps], dtype=float)
            window = max(1, min(round(run.steps_per_epoch / 5), len(losses)))
            at = np.array([s["step"] for s in steps], dtype=float)[window - 1:] / run.steps_per_epoch
            ax_loss.plot(at, _running_mean(losses, window), color=color, ls=style, lw=1.6)
        epochs = [r["epoch"] for r in run.epochs]
        val = [r["val_accuracy"] for r in run.epochs]
        if all(v is not None for v in val):
            ax_val.plot(epochs, [100 * v for v in val], marker="o", ms=5, color=color, ls=style,
                        lw=1.6)
        ax_time.plot([r["train_seconds"] for r in run.epochs],
                     [100 * r["test_accuracy"] for r in run.epochs],
                     marker="s", ms=5, color=color, ls=style, lw=1.6, label=label)
    _log_axis(ax_loss)
    ax_loss.set(xlabel="epoch", ylabel="training loss (running mean, log scale)",
                title="Training loss")
    ax_val.set(xlabel="epoch", ylabel="validation accuracy", title="Validation accuracy")
    ax_time.set(xlabel="training time (s)", ylabel="test accuracy",
                title="Test accuracy against training time")
    best = max(r["test_accuracy"] for run in runs for r in run.epochs)
    for target in TARGETS:
        if target <= best + 0.005:  # a line far above every curve would squash them
            ax_time.axhline(100 * target, color="gray", lw=0.8, ls=":")
            ax_time.annotate(f"{target:.0%}", (0.01, 100 * target), xycoords=("axes fraction", "data"),
                             ha="left", va="bottom", fontsize=8, color="gray")
    ax_val.xaxis.set_major_locator(require_matplotlib().ticker.MaxNLocator(integer=True))
    for ax in (ax_val, ax_time):
        _percent_axis(ax)
    for ax in (ax_loss, ax_val, ax_time):
        ax.grid(alpha=0.3)
    fig.legend(*ax_time.get_legend_handles_labels(), loc="outside lower center",
               ncols=columns, fontsize=10)
    fig.suptitle(f"Comparison of {len(runs)} runs", fontsize=13)
    return fig
