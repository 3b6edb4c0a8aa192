"""The figures shared by sweep, compare and report: what a reader of them would trip on."""

import pytest

from fastlenet.figures import new_figure, plot_accuracy_over_time, plot_last_accuracy, png_bytes
from fastlenet.runs import Run

pytest.importorskip("matplotlib")


def a_run(name, accuracies):
    epochs = [{"epoch": e + 1, "step": 10 * (e + 1), "test_accuracy": a, "val_accuracy": a,
               "train_seconds": 2.0 * (e + 1), "train_loss": 1.0, "train_accuracy": a,
               "test_loss": 1.0} for e, a in enumerate(accuracies)]
    return Run(path=__import__("pathlib").Path(name), config={}, history={"steps": [], "epochs": epochs})


def test_last_accuracies_are_dots_coloured_as_their_lines(tmp_path):
    """A bar cut off near the lowest accuracy read as empty (52% beside 72%), and every bar
    was one colour beside lines of several: now a dot per setting in its line's colour,
    the setting that diverged a word."""
    runs = [a_run("lr-0.001", [0.31, 0.52]), a_run("lr-0.003", [0.55, 0.72])]
    fig = new_figure((10, 4))
    curves, dots = fig.subplots(1, 2)
    plot_accuracy_over_time(curves, runs, ["lr-0.001", "lr-0.003"])
    plot_last_accuracy(dots, ["lr-0.001", "lr-1000", "lr-0.003"], [0.52, None, 0.72],
                       ["ok", "diverged", "ok"])
    line_colours = [line.get_color() for line in curves.get_lines() if line.get_marker() == "s"]
    dot_colours = [line.get_color() for line in dots.get_lines() if line.get_marker() == "o"]
    assert len(set(line_colours)) == 2 and dot_colours == line_colours
    assert [line.get_xdata()[0] for line in dots.get_lines() if line.get_marker() == "o"] == \
        pytest.approx([52, 72])
    assert all(bar.get_x() == 0 for bar in dots.patches)  # no bar starting off zero
    assert dots.get_xlim()[0] < 52 and dots.get_xlim()[1] > 100
    assert any(text.get_text().strip() == "diverged" for text in dots.texts)
    (tmp_path / "sweep.png").write_bytes(png_bytes(fig))
