"""A run whose loss explodes stops as diverged: one line with the fix, exit status 3,
``diverged`` in metrics.json and history.json, the last good checkpoint kept, and a
sweep's row reading ``diverged``. Real training at a huge learning rate, no mocks."""

import csv
import json

import numpy as np
import pytest

from fastlenet import TrainConfig
from fastlenet.checkpoint import load_checkpoint
from fastlenet.cli import EXIT_DIVERGED, main
from fastlenet.divergence import FACTOR, exploded, starting_loss
from fastlenet.errors import TrainingDivergedError
from fastlenet.train import Trainer

from helpers import load_backend, run_cli


def tiny_args(tiny_dir, backend):
    return ["--data-dir", str(tiny_dir), "--limit", "640", "--val-size", "100",
            "--batch-size", "64", "--backend", backend]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_adam_at_a_huge_lr_stops_as_diverged(backend, tiny_dir, tmp_path):
    load_backend(backend)  # skips, saying why, where numba is not installed
    out = tmp_path / "run"
    result = run_cli("train", *tiny_args(tiny_dir, backend), "--lr", "1e3", "--epochs", "3",
                     "--out", out, "--no-progress")
    assert result.returncode == EXIT_DIVERGED == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("fastlenet: error: training diverged: ")
    assert "at epoch 1, step" in lines[0] and "--lr than the 1000 used, e.g. --lr 100" in lines[0]
    assert "no checkpoint was written" in lines[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["epochs"] == 0
    assert metrics["stop_reason"] == lines[0].removeprefix("fastlenet: error: ")
    history = json.loads((out / "history.json").read_text())
    assert history["status"] == "diverged" and history["epochs"] == []
    assert max(s["loss"] for s in history["steps"]) > FACTOR * history["steps"][0]["loss"]
    assert not (out / "last.npz").exists() and not (out / "best.npz").exists()
    assert "test accuracy" not in result.stdout  # no "success" line


def test_divergence_after_good_epochs_keeps_their_checkpoints(tiny_dir, tmp_path):
    """After a good epoch, the learning rate jumps to 1e3: the run stops in epoch 2 and
    last.npz and best.npz stay those of epoch 1."""
    out = tmp_path / "run"
    config = TrainConfig(data_dir=str(tiny_dir), train_limit=640, val_size=100, batch_size=64,
                         backend="numpy", epochs=3, lr=3e-3)

    def raise_lr(record):
        trainer.schedule = lambda step: 1e3

    trainer = Trainer(config, out=out, log=None, progress=False, on_epoch_end=raise_lr)
    with pytest.raises(TrainingDivergedError, match=r"training diverged: .*at epoch 2, step "
                       r".*the last good checkpoint is .*last\.npz \(epoch 1\); try a lower --lr"):
        trainer.run()
    for name in ("last.npz", "best.npz"):
        good = load_checkpoint(out / name)
        assert good.meta["epoch"] == 1
        assert all(np.isfinite(v).all() for v in good.params.values())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["epochs"] == 1
    assert 0 < metrics["test_accuracy"] <= 1  # the last good epoch's
    assert json.loads((out / "history.json").read_text())["status"] == "diverged"


def test_a_finished_run_records_its_status(tiny_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *tiny_args(tiny_dir, "numpy"), "--epochs", "1", "--out", str(out),
                 "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["status"] == "finished"


def test_a_sweep_row_reads_diverged(tiny_dir, tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep", *tiny_args(tiny_dir, "numpy"), "--epochs", "1", "--lr", "3e-3,1e3",
                 "--out", str(out)]) == 0
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok", "diverged"]


def test_the_rule_cannot_fire_on_a_healthy_loss_curve():
    start = starting_loss(2.9, 10)
    healthy = [2.9, 2.6, 3.1, 2.2] + [0.5] * 100 + [3.0] * 3  # a few bad batches late on
    assert all(exploded(healthy[:i], 64, start) is None for i in range(1, len(healthy) + 1))
    assert exploded([2.9] + [40.0] * 7, 64, start) == pytest.approx((2.9 + 280) / 8)
    assert exploded([2.9, 1e6], 1, start) is None  # 2 images: too few to say
    assert starting_loss(0.1, 10) == pytest.approx(np.log(10))
