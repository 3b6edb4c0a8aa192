"""Full-MNIST runs (minutes each): ``python -m pytest -m slow``.

The default ``fastlenet train`` must reach 99.0% test accuracy, within 1.5 GB of memory.
"""

import json
import resource
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_default_train_reaches_99_percent_within_memory_budget(tmp_path):
    out = tmp_path / "run"
    # A child process, so its peak RSS is its own and not the test runner's.
    result = subprocess.run([sys.executable, "-m", "fastlenet", "train", "--out", str(out),
                             "--no-progress"], capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr
    peak_bytes = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.99, metrics
    assert peak_bytes <= 1.5e9, f"peak RSS {peak_bytes / 1e9:.2f} GB"
    assert metrics["parameters"] == 61706 and metrics["model"] == "lenet5"


def test_compact_beats_lenet5(tmp_path):
    lenet = json.loads(_train(tmp_path / "lenet", "lenet5", 3))["test_accuracy"]
    compact = json.loads(_train(tmp_path / "compact", "compact", 3))["test_accuracy"]
    assert compact > lenet


def _train(out, model, epochs):
    subprocess.run([sys.executable, "-m", "fastlenet", "train", "--model", model, "--epochs",
                    str(epochs), "--out", str(out), "--no-progress"], check=True,
                   capture_output=True, timeout=3600)
    return (out / "metrics.json").read_text()
