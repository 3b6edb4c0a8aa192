"""Reports on training runs: figures and one HTML page per run.

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

Run folders are read by fastlenet/runs.py and the figures drawn with the helpers of
fastlenet/figures.py, as ``compare`` and ``sweep`` do. Every file is written atomically.
"""

from __future__ import annotations

import base64
import html
import math
import textwrap
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from .version import __version__
from .atomic_write import write_file
from .checkpoint import load_model
from .checks import is_integer
from .errors import ConfigError, RunFolderError
from .evaluation import confusion_matrix, load_test_set, per_class_accuracy
from .figures import (log_axis, new_figure, percent_axis, png_bytes, require_matplotlib,
                      running_mean)
from .nn import AvgPool2d, Conv2d, MaxPool2d, ReLUMaxPool2d
from .runs import NOT_SETTINGS, TARGETS, Run, load_run, setting_text

MISTAKES_GRID = (4, 8)  # rows, columns of misclassified.png
MAPS_PER_ROW = 16  # feature maps per row of feature_maps.png

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


def _probability(p: float) -> str:
    """A probability for a label; never rounds a sure-looking 99.96% up to 100%."""
    return f"{p:.1%}" if p < 0.999 else ">99.9%"


# ------------------------------------------------------------------- figures
def plot_curves(run: Run, title: str):
    """Loss (log scale) and accuracy of a run against steps (bottom axis) and epochs (top)."""
    ticker = require_matplotlib().ticker
    epochs, spe = run.epochs, run.steps_per_epoch
    ends = np.array([r["step"] for r in epochs], dtype=float)
    steps = np.array([s["step"] for s in run.history["steps"]], dtype=float)
    losses = np.array([s["loss"] for s in run.history["steps"]], dtype=float)

    fig = new_figure((13, 5))
    ax_loss, ax_acc = fig.subplots(1, 2)
    if len(steps):
        ax_loss.plot(steps, losses, color="C0", alpha=0.25, lw=0.8, label="train, each step")
        window = max(1, round(spe / 5))
        if len(losses) >= 2 * window:
            ax_loss.plot(steps[window - 1:], running_mean(losses, window), color="C0", lw=1.6,
                         label=f"train, mean of {window} steps")
    series = [("validation", "val", "C1", "o"), ("test", "test", "C2", "s")]
    for label, key, color, marker in series:
        values = [r[f"{key}_loss"] for r in epochs]
        if all(v is not None for v in values):
            ax_loss.plot(ends, values, marker=marker, color=color, label=f"{label}, after each epoch")
    log_axis(ax_loss)
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
    percent_axis(ax_acc)
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
    percent_axis(inset)
    inset.tick_params(labelsize=8)
    inset.grid(alpha=0.3)
    inset.set_title("validation and test, late epochs (zoomed)", fontsize=8)
    inset.set_xlabel("epoch", fontsize=8, labelpad=1)


def plot_confusion(confusion: np.ndarray, class_names: list[str], title: str):
    """confusion: (K, K) counts, rows true classes, columns predicted."""
    mpl = require_matplotlib()
    k = len(class_names)
    support = confusion.sum(axis=1)
    recall = per_class_accuracy(confusion)
    fig = new_figure((9, 7.6))
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
    fig = new_figure((cols * 1.55, rows * 1.9 + 0.5))
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
    fig = new_figure((7, 8))
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
    fig = new_figure((cols * 1.7 + 1.4, rows * 1.8 + 0.9))
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
            if isinstance(layer, (Conv2d, MaxPool2d, AvgPool2d, ReLUMaxPool2d)):
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
    fig = new_figure((MAPS_PER_ROW * tile + 0.3, sum(heights) + 0.5))
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


TABLE_WRAP = 76  # characters per line of a value in plot_table: its column at 11 pt


def plot_table(rows: list[tuple[str, str]], title: str):
    """A two-column table (name, value) as a figure; long values wrap onto more lines
    and their rows grow to fit."""
    values = [textwrap.fill(value, TABLE_WRAP, break_on_hyphens=False) for _, value in rows]
    lines = [value.count("\n") + 1 for value in values]
    fig = new_figure((10, 0.34 * sum(lines) + 0.6))
    ax = fig.subplots()
    ax.set_axis_off()
    table = ax.table(cellText=[[name, value] for (name, _), value in zip(rows, values)],
                     cellLoc="left", colWidths=[0.3, 0.7], bbox=(0, 0, 1, 1))
    table.auto_set_font_size(False)
    table.set_fontsize(11)
    for (row, col), cell in table.get_celld().items():
        cell.set_height(lines[row] / sum(lines))  # the bbox scales rows by these shares
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
    confusion = confusion_matrix(y, preds, model.num_classes)
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
        images[stem] = png_bytes(makers[stem]())
        figures[stem] = write_file(folder / f"{stem}.png", images[stem])
    page = _html_page(run, summary, images, dataset.name, model.backend.name)
    html_path = write_file(folder / "report.html", page)
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
    others = [f"{k.replace('_', ' ')} {setting_text(v)}" for k, v in sorted(config.items())
              if k not in shown | NOT_SETTINGS and v is not None]
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
