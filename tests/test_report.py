"""``fastlenet report`` and ``fastlenet compare`` on tiny runs: every figure is made, has
its size and is not blank; the HTML page holds and links every figure; the tables have
the right rows; every broken run folder is one line."""

import base64
import contextlib
import csv
import io
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fastlenet.cli import main
from fastlenet.compare import COMPARE_COLUMNS, compare_runs
from fastlenet.report import FIGURES, make_report

from helpers import assert_one_line_error

# (width, height) in pixels of each figure of a lenet5 run; the summary's height grows
# with its rows
SIZES = {"curves": (1560, 600), "confusion": (1080, 912), "misclassified": (1488, 972),
         "samples": (840, 960), "filters": (1392, 324), "feature_maps": (1725, 945)}


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    """Two 2-epoch lenet5 runs on the tiny MNIST cut, trained with the command, that differ
    in learning rate; the first makes its report as it ends (--report). Returns
    {name: (run folder, what the command printed)}."""
    base = tmp_path_factory.mktemp("report-runs")
    runs = {}
    for name, lr, extra in (("quick", "3e-3", ["--report"]), ("careful", "1e-3", [])):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["train", "--data-dir", str(tiny_dir), "--epochs", "2", "--batch-size",
                         "50", "--val-size", "200", "--lr", lr, "--seed", "1", "--no-progress", "--backend", "numpy",
                         "--out", str(base / name), *extra]) == 0
        runs[name] = base / name, printed.getvalue()
    return runs


@pytest.fixture(scope="module")
def tiny_runs(trained):
    return trained["quick"][0], trained["careful"][0]


@pytest.fixture(scope="module")
def report(tiny_runs):
    """The report folder ``train --report`` wrote."""
    return tiny_runs[0] / "report"


def figure_paths(folder):
    return {stem: folder / f"{stem}.png" for stem in FIGURES}


def pixels(path):
    return np.asarray(Image.open(path).convert("L"), dtype=np.float64)


def assert_not_blank(path):
    """More than frames and titles: an empty set of axes has about 1% dark pixels."""
    gray = pixels(path)
    assert gray.std() > 25, f"{path.name} is nearly uniform"
    assert (gray < 200).mean() > 0.02, f"{path.name} is nearly empty"


def test_train_makes_the_report_or_says_how(trained):
    quick, careful = trained["quick"], trained["careful"]
    assert f"report of {quick[0]}: best.npz scores" in quick[1]
    assert "report.html" in quick[1] and "fastlenet report" not in quick[1]
    assert f"figures and an HTML report: fastlenet report {careful[0]}\n" in careful[1]
    assert not (careful[0] / "report").exists()


def test_every_figure_is_made_with_its_size_and_is_not_blank(report):
    assert {p.name for p in report.iterdir()} == {f"{s}.png" for s in FIGURES} | {"report.html"}
    for stem, path in figure_paths(report).items():
        width, height = Image.open(path).size
        if stem == "summary":
            assert width == 1200 and height >= 400
        else:
            assert (width, height) == SIZES[stem], stem
        assert_not_blank(path)


def test_blank_figures_fail_the_check(tmp_path):
    from matplotlib.figure import Figure

    blank = tmp_path / "blank.png"
    Image.new("RGB", (600, 400), "white").save(blank)
    empty = tmp_path / "empty.png"  # titled, labelled axes with nothing in them
    fig = Figure(figsize=(16, 5.7), dpi=120, layout="constrained")
    for ax in fig.subplots(1, 3):
        ax.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy")
    fig.suptitle("Comparison of 2 runs")
    fig.savefig(empty)
    for path in (blank, empty):
        with pytest.raises(AssertionError):
            assert_not_blank(path)


def test_the_page_embeds_and_links_every_figure(report):
    page = (report / "report.html").read_text()
    figures = figure_paths(report)
    for stem in figures:
        assert f'href="{stem}.png"' in page
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [base64.b64decode(data) for data in embedded] == \
        [path.read_bytes() for path in figures.values()]


def test_the_summary_scores_best_npz_as_training_did(report, tiny_runs):
    page = (report / "report.html").read_text()
    summary = dict(re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td></tr>", page))
    history = json.loads((tiny_runs[0] / "history.json").read_text())
    best = max(history["epochs"], key=lambda r: r["val_accuracy"])
    accuracy = float(summary["test accuracy of best.npz"].split("%")[0]) / 100
    assert abs(accuracy - best["test_accuracy"]) <= 1 / 300 + 1e-9
    assert summary["model"].startswith("lenet5 (61,706 parameters")
    assert summary["data"] == "custom: 1,000 training, 200 validation, 300 test images"
    assert summary["epochs"].startswith("2 of 2")
    assert summary["best validation accuracy"].startswith(f"{best['val_accuracy']:.2%} (epoch {best['epoch']}")


def test_make_report_returns_what_it_wrote(tiny_runs, report, tmp_path, monkeypatch):
    """As a library call, into another folder, without drawing: the figures' pixels are
    the tests above; here the return value and the files."""
    import fastlenet.report as module

    monkeypatch.setattr(module, "png_bytes", lambda fig: b"png")
    result = make_report(tiny_runs[0], tmp_path / "r", log=None)
    assert result.folder == tmp_path / "r" and result.html == tmp_path / "r" / "report.html"
    assert result.figures == figure_paths(tmp_path / "r")
    assert all(path.read_bytes() == b"png" for path in result.figures.values())
    assert f"{result.test_accuracy:.2%}" in (report / "report.html").read_text()


def test_curves_zoom_on_late_epochs_only_when_early_ones_stretch_the_axis(tmp_path):
    from fastlenet.report import plot_curves
    from fastlenet.runs import Run

    def run_with(accuracies):
        epochs = [{"epoch": e, "step": 10 * e, "train_loss": 0.1, "train_accuracy": a,
                   "val_loss": 0.1, "val_accuracy": a, "test_loss": 0.1, "test_accuracy": a,
                   "train_seconds": float(e)} for e, a in enumerate(accuracies, 1)]
        steps = [{"step": s, "loss": 1 / s} for s in range(1, 10 * len(accuracies) + 1)]
        return Run(tmp_path, {}, {"steps": steps, "epochs": epochs})

    def insets(run):
        from matplotlib.axes import Axes  # an inset is one; the top epoch axis is not

        return sum(isinstance(child, Axes) for child in plot_curves(run, "t").axes[1].child_axes)

    assert insets(run_with([0.80, 0.97, 0.985, 0.988, 0.989, 0.99])) == 1
    assert insets(run_with([0.95, 0.96, 0.97, 0.98, 0.985, 0.99])) == 0  # readable as it is
    assert insets(run_with([0.80, 0.99])) == 0  # too few epochs to zoom on


def test_misclassified_says_so_when_there_are_no_mistakes():
    from fastlenet.report import plot_misclassified

    labels = np.arange(10)
    images = np.zeros((10, 28, 28), dtype=np.uint8)
    fig = plot_misclassified(images, labels, np.eye(10), [str(d) for d in range(10)])
    assert fig.get_suptitle() == "Misclassified test images: none of 10"
    assert "every test image is classified correctly" in [t.get_text() for t in fig.texts]
    assert not any(ax.images for ax in fig.axes)


def test_compare_writes_markdown_csv_and_figure(tiny_runs, tmp_path):
    result = compare_runs(tiny_runs, tmp_path / "cmp")
    assert {p.name for p in (tmp_path / "cmp").iterdir()} == {"compare.md", "compare.csv", "compare.png"}
    with open(result.csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["quick", "careful"]
    assert [float(r["lr"]) for r in rows] == [3e-3, 1e-3]
    assert list(rows[0]) == list(COMPARE_COLUMNS)
    for run, row in zip(tiny_runs, rows):
        last = json.loads((run / "history.json").read_text())["epochs"][-1]
        assert float(row["test acc"]) == last["test_accuracy"]
        assert float(row["time (s)"]) == last["train_seconds"]
        assert row["epochs"] == "2" and row["model"] == "lenet5" and row["dataset"] == "custom"
    lines = result.markdown_path.read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("| run | model | dataset |")
    assert lines[2].startswith("| quick | lenet5 | custom | numpy | adam | 0.003 | 50 | 2 |")
    assert Image.open(result.figure_path).size[0] == 1920
    assert_not_blank(result.figure_path)


def test_compare_names_runs_by_path_when_folder_names_clash(tiny_runs, tmp_path, monkeypatch):
    monkeypatch.setattr("fastlenet.compare.png_bytes", lambda fig: b"png")  # not drawn here
    twin = tmp_path / "elsewhere" / "quick"
    shutil.copytree(tiny_runs[0], twin)
    result = compare_runs([tiny_runs[0], twin, tiny_runs[1]], tmp_path / "cmp")
    assert [row["run"] for row in result.rows] == [str(tiny_runs[0]), str(twin), "careful"]


def test_cli_compare_prints_the_table(tiny_runs, tmp_path, capsys):
    assert main(["compare", *map(str, tiny_runs), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "| quick |" in out and "| careful |" in out and "compare.csv" in out


def test_compare_refuses_a_folder_holding_a_comparison_as_sweep_does(tiny_runs, tmp_path,
                                                                    capsys, monkeypatch):
    """One rule for sweep and compare: an existing output folder is never written over;
    without --out each gets a new folder named by the time."""
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, tiny_runs), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    one_line_error(capsys, ["compare", str(tiny_runs[0]), "--out", str(out)],
                   f"{out} already holds a comparison; choose another --out")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.chdir(tmp_path)
    assert main(["compare", *map(str, tiny_runs)]) == 0
    assert main(["compare", *map(str, tiny_runs)]) == 0
    made = sorted((tmp_path / "comparisons").iterdir())
    assert len(made) == 2 and all((m / "compare.md").is_file() for m in made)


def test_cli_report_passes_its_options(tiny_runs, tmp_path, monkeypatch):
    """The options reach make_report (which train --report above ran for real)."""
    calls = []
    monkeypatch.setattr("fastlenet.report.make_report", lambda *a, **kw: calls.append((a, kw)))
    assert main(["report", str(tiny_runs[1]), "--out", str(tmp_path), "--seed", "4",
                 "--backend", "numpy"]) == 0
    assert calls == [((str(tiny_runs[1]), str(tmp_path)), {"backend": "numpy", "seed": 4})]


def one_line_error(capsys, argv, *fragments):
    assert main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, *fragments)


def test_broken_run_folders_are_one_line(tiny_runs, tmp_path, capsys):
    run = tiny_runs[0]
    one_line_error(capsys, ["report", str(tmp_path / "missing")], "no such run folder")
    one_line_error(capsys, ["compare", str(run), str(tmp_path / "missing")], "no such run folder")
    one_line_error(capsys, ["report", str(tmp_path)], "no config.json")

    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(run / "config.json", broken)
    one_line_error(capsys, ["report", str(broken)], "no history.json")
    shutil.copy(run / "history.json", broken)
    one_line_error(capsys, ["report", str(broken)], "no best.npz")

    history = broken / "history.json"
    history.write_text(history.read_text()[:500])
    one_line_error(capsys, ["compare", str(broken)], "history.json", "corrupt JSON")
    history.write_text(json.dumps({"steps": [], "epochs": []}))
    one_line_error(capsys, ["report", str(broken)], "no finished epoch")
    history.write_text(json.dumps({"steps": [], "epochs": [{"epoch": 1}]}))
    one_line_error(capsys, ["compare", str(broken)], "lacks a valid step")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    one_line_error(capsys, ["compare", str(run), "--out", str(blocker / "cmp")], "cannot write",
                   "--out")
    (broken / "config.json").write_text("[1, 2]")
    one_line_error(capsys, ["report", str(broken)], "config.json")
    one_line_error(capsys, ["report", str(run), "--seed", "-1"], "--seed")


def test_missing_matplotlib_is_one_line_naming_the_extra(tiny_runs, tmp_path):
    script = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'matplotlib':
            raise ImportError(f'No module named {name!r}')
sys.meta_path.insert(0, Block())
from fastlenet.cli import main
sys.exit(main(sys.argv[1:]))
"""
    for args in (["report", str(tiny_runs[0])],
                 ["train", "--epochs", "1", "--report", "--out", str(tmp_path / "never")]):
        result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and 'pip install "fastlenet[plots]"' in lines[0], result.stderr
    assert not (tmp_path / "never").exists()  # refused before training started


def test_a_long_summary_row_stays_inside_the_figure():
    """summary.png cut "other settings" off at its right edge; long values now wrap inside
    their cell."""
    from fastlenet.report import plot_table

    others = ", ".join(f"augment {k} {v}" for k, v in (("elastic", 34.0), ("noise", 0.1),
                                                      ("rotate", 10.0), ("scale", 0.1),
                                                      ("shear", 0.3), ("shift", 2.0)))
    fig = plot_table([("run", "runs/x"), ("other settings", f"augment True, {others}, "
                                                            "label smoothing 0.05")], "Summary")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    width = fig.bbox.width
    table = fig.axes[0].tables[0]
    for cell in table.get_celld().values():
        text, box = cell.get_text().get_window_extent(renderer), cell.get_window_extent(renderer)
        assert 0 <= text.x0 and text.x1 <= width, cell.get_text().get_text()
        assert box.x0 - 1 <= text.x0 and text.x1 <= box.x1 + 1, cell.get_text().get_text()
        assert box.y0 - 1 <= text.y0 and text.y1 <= box.y1 + 1, cell.get_text().get_text()
    assert "label smoothing 0.05" in table[1, 1].get_text().get_text().replace("\n", " ")
