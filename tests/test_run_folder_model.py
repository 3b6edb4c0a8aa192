"""A run folder means its best.npz to every command that uses a model: evaluate, predict,
export, demo and report give what they give for RUN/best.npz, and each one's help says so."""

import json

import numpy as np
import pytest

from fastlenet.checkpoint import load_checkpoint, save_checkpoint
from fastlenet.cli import main

from helpers import assert_one_line_error, run_cli

COMMANDS = ("evaluate", "predict", "export", "demo", "report")


@pytest.fixture(scope="module")
def run(tiny_dir, tmp_path_factory):
    """A trained run whose last.npz differs from its best.npz (weights scaled down, as a
    later, worse epoch would leave them), so that reading the wrong one shows."""
    out = tmp_path_factory.mktemp("run-folder") / "run"
    assert main(["train", "--data-dir", str(tiny_dir), "--epochs", "1", "--val-size", "100",
                 "--batch-size", "50", "--backend", "numpy", "--out", str(out),
                 "--no-progress"]) == 0
    last = load_checkpoint(out / "last.npz")
    save_checkpoint(out / "last.npz", {k: 0.2 * v for k, v in last.params.items()}, last.optim,
                    last.meta)
    return out


def evaluated(capsys, path) -> float:
    assert main(["evaluate", str(path), "--json", "--backend", "numpy"]) == 0
    return json.loads(capsys.readouterr().out)["accuracy"]


def test_evaluate_of_a_run_folder_is_its_best_checkpoint(run, capsys):
    best, last = evaluated(capsys, run / "best.npz"), evaluated(capsys, run / "last.npz")
    assert best != last
    assert evaluated(capsys, run) == best


def test_load_model_of_a_run_folder_is_its_best_checkpoint(run):
    """The Python API follows the commands' rule (resuming alone reads last.npz)."""
    from fastlenet.checkpoint import load_model

    folder, best = (load_model(p, "numpy")[0].state_dict() for p in (run, run / "best.npz"))
    last = load_checkpoint(run).params
    for name, value in best.items():
        np.testing.assert_array_equal(folder[name], value)
    assert any(not np.array_equal(last[name], value) for name, value in best.items())


def test_predict_of_a_run_folder_is_its_best_checkpoint(run, tmp_path, capsys):
    from PIL import Image

    from fastlenet.data import load_dataset

    path = tmp_path / "digit.png"
    Image.fromarray(load_dataset("mnist").test_images[1]).save(path)
    printed = {}
    for source in (run, run / "best.npz", run / "last.npz"):
        assert main(["predict", str(source), str(path), "--backend", "numpy"]) == 0
        printed[source] = capsys.readouterr().out
    assert printed[run] == printed[run / "best.npz"] != printed[run / "last.npz"]


def test_export_and_demo_of_a_run_folder_write_beside_best(run, capsys):
    assert main(["export", str(run), "--format", "npz"]) == 0
    assert "best.npz" in capsys.readouterr().out
    written = np.load(run / "best-torch.npz")
    best = load_checkpoint(run / "best.npz").params
    np.testing.assert_array_equal(written["0.weight"], best["0.weight"])
    assert not (run / "last-torch.npz").exists()
    assert main(["demo", str(run)]) == 0
    assert (run / "best-demo.html").is_file() and not (run / "last-demo.html").exists()


def test_a_run_folder_without_a_checkpoint_is_one_line(tmp_path):
    stopped = tmp_path / "stopped"  # interrupted before its first epoch ended
    stopped.mkdir()
    (stopped / "config.json").write_text("{}")
    for command in ("evaluate", "export", "demo"):
        assert_one_line_error(run_cli(command, stopped), "no checkpoint yet",
                              f"--resume {stopped}")
    assert_one_line_error(run_cli("evaluate", tmp_path), "no best.npz", "run folder")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_says_a_run_folder_means_best_npz(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert "run folder (meaning its best.npz" in " ".join(result.stdout.split()), result.stdout


def test_interrupted_before_the_first_checkpoint_every_message_points_at_resume(tmp_path):
    """SIGINT during the first epoch leaves config.json alone; the interrupt line and the
    commands that then read the folder all point at --resume RUN (which starts it over)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "fastlenet", "train", "--backend", "numpy",
                                "--epochs", "1", "--out", str(out), "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (out / "config.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and f"--resume {out} starts it again" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    for command in ("evaluate", "export", "demo"):
        assert_one_line_error(run_cli(command, out), "no checkpoint yet",
                              f"'fastlenet train --resume {out}'")
