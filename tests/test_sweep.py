"""``fastlenet sweep`` on tiny runs: one row per setting, failures as rows, bad grids."""

import csv
import sys

import pytest

from fastlenet.cli import main
from fastlenet.sweep import run_sweep
from fastlenet.sweep_local import child_environment
from fastlenet.sweep_setting import THREAD_VARIABLES, setting_name

from helpers import assert_one_line_error, run_cli


def tiny(tiny_dir):
    """Options for runs of a few seconds: 200 images, one epoch."""
    return ["--data-dir", str(tiny_dir), "--limit", "200", "--val-size", "50", "--epochs", "1",
            "--backend", "numpy", "--batch-size", "50"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sequential_sweep_tabulates_every_setting_and_reports_failures(tiny_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", *tiny(tiny_dir), "--optimizer", "sgd", "--lr", "0.05,1e9",
                 "--augment", "off,on", "--out", str(out)])
    assert code == 0
    rows = read_csv(out / "sweep.csv")
    assert [(r["lr"], r["augment"]) for r in rows] == [("0.05", "off"), ("0.05", "on"),
                                                       ("1000000000.0", "off"), ("1000000000.0", "on")]
    for row in rows[:2]:
        assert row["status"] == "ok" and 0 <= float(row["test_accuracy"]) <= 1
        assert float(row["train_seconds"]) > 0 and (out / row["run"] / "metrics.json").is_file()
    for row in rows[2:]:  # diverged: a row saying so, not a crashed sweep
        assert row["status"] == "diverged" and row["test_accuracy"] == ""
    assert rows[1]["run"] == "lr-0.05_augment-on"
    assert '"augment": true' in (out / rows[1]["run"] / "config.json").read_text()
    table = (out / "sweep.md").read_text().splitlines()
    assert table[2].startswith("| --lr | --augment | status | test acc")
    assert len(table) == 4 + len(rows) and "| diverged |" in table[-1]
    assert (out / "sweep.png").stat().st_size > 10_000
    assert "[4/4 done, 0 running, 0 pending]" in capsys.readouterr().out
    # a sweep never overwrites another
    assert main(["sweep", *tiny(tiny_dir), "--lr", "1e-3,2e-3", "--out", str(out)]) == 2


def test_parallel_sweep_limits_threads_and_works_without_matplotlib(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises
    messages = []
    fixed = dict(dataset="custom", data_dir=str(tiny_dir), train_limit=200, val_size=50,
                 epochs=1, backend="numpy", batch_size=50)
    rows = run_sweep({"seed": [1, 2]}, fixed, out=tmp_path / "s", jobs=2, log=messages.append)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all(0 < r["test_accuracy"] <= 1 and r["train_seconds"] > 0 for r in rows)
    assert {p.name for p in (tmp_path / "s").iterdir()} == {"seed-1", "seed-2", "sweep.json", "sweep.md", "sweep.csv"}
    assert 'pip install "fastlenet[plots]"' in messages[-1]
    env = child_environment(jobs=2)
    assert all(env[name] == "1" for name in THREAD_VARIABLES)


def test_setting_names_are_folder_names():
    assert setting_name({"lr": 0.001, "batch_size": 64}) == "lr-0.001_batch-size-64"
    assert setting_name({"train_limit": 100, "augment": True}) == "limit-100_augment-on"


@pytest.mark.parametrize("args, fragment", [
    (["--lr", "1e-3,fast"], "--lr: not a number: 'fast'"),
    (["--model", "lenet5,resnet"], "--model: invalid choice 'resnet'"),
    (["--epochs", "0,1"], "--epochs must be at least 1"),
    (["--lr", "1e-3"], "at least one option with several values"),
    (["--lr", "1e-3,1e-3"], "--lr lists a value twice"),
    (["--augment", "maybe", "--lr", "1e-3,2e-3"], "--augment takes on or off"),
    (["--augment-rotate", "5,10"], "--augment-rotate sets up augmentation"),
    (["--colour", "red,blue"], "unrecognized arguments: --colour"),
    (["--lr", "1e-3,2e-3", "--jobs", "0"], "--jobs must be an integer >= 1"),
])
def test_bad_grids_are_one_line(args, fragment, tmp_path):
    assert_one_line_error(run_cli("sweep", *args, "--out", tmp_path / "s"), fragment)
    assert not (tmp_path / "s").exists()


def test_an_interrupted_sweep_resumes_to_the_table_of_one_never_stopped(tiny_dir, tmp_path):
    fixed = dict(data_dir=str(tiny_dir), val_size=50, epochs=2, backend="numpy", batch_size=25)
    grid = {"seed": [1, 2, 3]}
    whole = run_sweep(grid, fixed, out=tmp_path / "whole", jobs=2, log=None)

    def interrupt_after_the_first(message):  # Ctrl-C once a setting has ended
        if message.startswith("[1/3 done"):
            raise KeyboardInterrupt

    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(grid, fixed, out=out, jobs=2, log=interrupt_after_the_first)
    statuses = [row["status"] for row in read_csv(out / "sweep.csv")]
    assert sorted(statuses) == ["interrupted", "ok", "pending"], statuses
    assert main(["sweep", "--resume", str(out), "--jobs", "2"]) == 0
    same = ("seed", "status", "test_accuracy", "best_val_accuracy", "epochs", "run")
    assert ([{k: row[k] for k in same} for row in read_csv(out / "sweep.csv")]
            == [{k: row[k] for k in same} for row in read_csv(tmp_path / "whole" / "sweep.csv")])
    assert [row["status"] for row in whole] == ["ok"] * 3


@pytest.mark.parametrize("args, fragment", [
    (["--resume", "{tmp}/none"], "not a sweep that can be resumed (no sweep.json there)"),
    (["--resume", "{tmp}", "--lr", "1e-3"], "--resume continues a sweep with its own settings and folder; drop --lr"),
    (["--resume", "{tmp}", "--out", "{tmp}/x"], "drop --out"),
])
def test_bad_resumes_are_one_line(args, fragment, tmp_path):
    args = [a.format(tmp=tmp_path) for a in args]
    assert_one_line_error(run_cli("sweep", *args), fragment)


def test_a_cluster_without_dask_installed_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    for module in ("dask", "distributed"):  # as if the extra were not installed
        monkeypatch.setitem(sys.modules, module, None)
    assert main(["sweep", "--lr", "1e-3,2e-3", "--cluster", "local:2", "--out", str(tmp_path / "s")]) == 2
    assert_one_line_error(capsys.readouterr().err, "--cluster needs Dask",
                          'install it with: pip install -e ".[dask]"')
    assert not (tmp_path / "s").exists()
