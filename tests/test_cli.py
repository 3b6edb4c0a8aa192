"""The ``fastlenet`` command: smoke tests of each subcommand and of every user error."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastlenet.cli import main
from fastlenet.data import load_dataset

from helpers import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def trained_run(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-run") / "run"
    code = main(["train", "--data-dir", str(tiny_dir), "--epochs", "2", "--val-size", "100",
                 "--batch-size", "50", "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def test_help_and_version():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("train", "sweep", "report", "compare", "evaluate", "predict", "export", "demo",
                    "summary", "info"):
        assert command in result.stdout
    assert "--target-accuracy" in run_cli("train", "--help").stdout
    assert "--augment-elastic" in run_cli("train", "--help").stdout
    assert run_cli("--version").stdout.startswith("fastlenet ")


def test_train_writes_a_run_folder(trained_run, capsys):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["dataset"] == "custom"
    assert 0.5 < metrics["test_accuracy"] <= 1


def test_train_prints_validation_and_test_accuracy_each_epoch(tiny_dir, tmp_path, capsys):
    assert main(["train", "--data-dir", str(tiny_dir), "--epochs", "1", "--val-size", "100",
                 "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "val " in out and "test " in out and "img/s" in out
    assert "after 1 epoch," in out and "1 epochs" not in out


def test_evaluate_prints_accuracy_per_class_and_confusion(trained_run, tiny_dir, capsys):
    assert main(["evaluate", str(trained_run / "best.npz"), "--data-dir", str(tiny_dir)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "per-class accuracy" in out and "confusion matrix" in out
    assert main(["evaluate", str(trained_run), "--json"]) == 0  # finds the run's own data
    report = json.loads(capsys.readouterr().out)
    confusion = np.array(report["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 300
    assert report["accuracy"] == pytest.approx(np.trace(confusion) / 300)


def test_predict_reads_a_digit_photo(trained_run, tmp_path, capsys):
    from PIL import Image

    digit = load_dataset("mnist").test_images[0]  # a 7
    photo = np.full((120, 100), 230, dtype=np.uint8)  # dark ink on light paper
    photo[20:104, 10:94] = 230 - (np.kron(digit, np.ones((3, 3), dtype=np.uint8)) * 0.8).astype(np.uint8)
    path = tmp_path / "seven.png"
    Image.fromarray(photo).save(path)
    assert main(["predict", str(trained_run / "best.npz"), str(path)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{path}: ") and "probability" in line


def test_summary_shows_lenet5_numbers():
    result = run_cli("summary", "lenet5")
    assert result.returncode == 0
    assert "61,706" in result.stdout and "122,304" in result.stdout


def test_info_lists_backends():
    result = run_cli("info")
    assert result.returncode == 0
    assert "numpy" in result.stdout and "usable" in result.stdout


def test_info_names_the_tile_width_where_numba_is_installed():
    pytest.importorskip("numba")
    from fastlenet.backends.numba import tiles

    result = run_cli("info")
    assert result.returncode == 0
    assert f"numba conv tiles       {tiles.VECTOR_BYTES}-byte vectors" in result.stdout


def test_info_lists_every_optional_dependency_and_the_default_backend():
    from importlib import metadata

    from fastlenet import backends

    result = run_cli("info")
    assert result.returncode == 0
    section = result.stdout.split("packages:\n")[1].split("\n\n")[0]
    lines = {line.split()[0]: line for line in section.splitlines()}
    for dist in ("numpy", "tqdm", "numba", "matplotlib", "pillow", "onnx", "onnxruntime", "torch",
                 "threadpoolctl", "dask", "distributed"):
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = "not installed"
        assert dist in lines and version in lines[dist], (dist, result.stdout)
    assert "cupy" in lines
    default = backends.get_backend("auto").name
    assert f"auto   -> {default} (the default)" in result.stdout


@pytest.mark.parametrize("args, fragment", [
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--lr", "fast"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--backend", "tpu"], "--backend"),
    (["train", "--model", "resnet50"], "--model"),
    (["train", "--optimizer", "lbfgs"], "--optimizer"),
    (["train", "--target-accuracy", "99"], "fraction"),
    (["train", "--val-size", "-5"], "--val-size"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--batch-size", "100000"], "--batch-size 100000 is more than the 55,000 training images"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--augment-rotate", "15"], "--augment-rotate sets up augmentation, which is off; add --augment"),
    (["train", "--augment", "--augment-scale", "2"], "--augment-scale must be in [0, 0.9]"),
    (["train", "--out", "/proc/no-such-place/run"], "cannot create the run folder"),
    (["train", "--data-dir", "/nonexistent/folder"], "/nonexistent/folder"),
    (["train", "--dataset", "fashion-mnist", "--data-dir", "/tmp"], "missing"),
    (["evaluate", "/nonexistent.npz"], "no such checkpoint"),
    (["bake"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(args, fragment):
    assert_one_line_error(run_cli(*args), fragment)


def test_a_failed_start_leaves_no_run_folder(tmp_path):
    out = tmp_path / "never"
    assert_one_line_error(run_cli("train", "--val-size", "70000", "--out", out), "--val-size")
    assert not out.exists()


def test_data_folder_from_the_environment_is_the_users_own_data(tiny_dir, tmp_path):
    out = tmp_path / "r"
    env = {**os.environ, "FASTLENET_DATA_DIR": str(tiny_dir)}
    result = subprocess.run([sys.executable, "-m", "fastlenet", "train", "--epochs", "1",
                             "--val-size", "100", "--out", str(out), "--no-progress"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "metrics.json").read_text())["dataset"] == "custom"


def test_images_of_another_size_are_one_line(trained_run, tmp_path):
    from fastlenet.data import FILES, write_idx

    rng = np.random.default_rng(0)
    for stem, array in zip(FILES, (rng.integers(0, 256, (50, 30, 30)), rng.integers(0, 10, 50),
                                   rng.integers(0, 256, (20, 30, 30)), rng.integers(0, 10, 20))):
        write_idx(tmp_path / stem, array.astype(np.uint8))
    assert_one_line_error(run_cli("evaluate", trained_run / "last.npz", "--data-dir", tmp_path),
                          "28x28")
    assert_one_line_error(run_cli("train", "--data-dir", tmp_path, "--val-size", "10",
                                  "--out", tmp_path / "r"), "28x28")


def test_corrupt_data_file_is_one_line(tiny_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_dir.iterdir():
        broken.joinpath(f.name).write_bytes(f.read_bytes())
    labels = broken / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-10])
    assert_one_line_error(run_cli("train", "--data-dir", broken, "--epochs", "1"),
                          "train-labels-idx1-ubyte.gz")


def test_corrupt_checkpoint_and_unreadable_image_are_one_line(trained_run, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes((trained_run / "last.npz").read_bytes()[:3000])
    assert_one_line_error(run_cli("evaluate", bad), "bad.npz")
    text = tmp_path / "note.png"
    text.write_text("not really a picture")
    assert_one_line_error(run_cli("predict", trained_run / "best.npz", text), "note.png")


def test_diverging_training_is_one_line(tiny_dir, tmp_path):
    result = run_cli("train", "--data-dir", tiny_dir, "--optimizer", "sgd", "--lr", "1e9",
                     "--epochs", "1", "--val-size", "100", "--out", tmp_path / "r")
    assert result.returncode == 3  # diverged, not a bad option (docs/cli.md#divergence)
    assert_one_line_error(result.stderr, "training diverged: loss became nan at epoch 1, step",
                          "--lr 1e+08")


def test_checkpoint_of_another_model_is_one_line(trained_run, tmp_path):
    from fastlenet.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(trained_run / "last.npz")
    wrong = tmp_path / "wrong.npz"
    save_checkpoint(wrong, ckpt.params, ckpt.optim, {**ckpt.meta, "model": "compact"})
    assert_one_line_error(run_cli("evaluate", wrong), "wrong.npz", "another model")


def test_resume_refuses_changed_settings_and_continues(trained_run, tmp_path):
    assert_one_line_error(run_cli("train", "--resume", trained_run, "--lr", "0.1"), "--lr")
    result = run_cli("train", "--resume", trained_run, "--epochs", "3", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout and "epoch 3/3" in result.stdout
    assert json.loads((trained_run / "metrics.json").read_text())["epochs"] == 3


def test_import_needs_only_numpy(tmp_path):
    """``import fastlenet`` and a forward pass work with every optional package hidden."""
    script = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'tqdm', 'PIL', 'numba', 'cupy', 'torch', 'matplotlib', 'scipy'}:
            raise ImportError(f'blocked {name}')
sys.meta_path.insert(0, Block())
import numpy as np, fastlenet
model = fastlenet.build_model('lenet5', 'numpy')
print(model.predict_proba(np.zeros((2, 1, 32, 32), np.float32)).shape)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(2, 10)"
