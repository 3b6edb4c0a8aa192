"""Bad input to the commands added since the first suite (export, demo, sweep options,
predict on odd images, evaluate and report options) and to the functional API's arrays:
each is one line, exit status 2, no traceback, and nothing half-written."""

import numpy as np
import pytest

from fastlenet import functional as F
from fastlenet.cli import main
from fastlenet.config import TrainConfig
from fastlenet.errors import FastLeNetError
from fastlenet.train import train

from helpers import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def run(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad-input") / "run"
    train(TrainConfig(dataset="custom", data_dir=str(tiny_dir), epochs=1, batch_size=64,
                      val_size=64, train_limit=128, backend="numpy"), out=out, log=None)
    return out


def files_in(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def check(args, capsys, *fragments):
    """``fastlenet ARGS`` in this process: exit status 2 and one line holding fragments."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, *fragments)


@pytest.fixture
def odd(tmp_path):
    """A folder of things that are not checkpoints, run folders or output places."""
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "text.npz").write_text("not a checkpoint")
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("a file, not a folder")
    return tmp_path


@pytest.mark.parametrize("command", ["export", "demo"])
def test_export_and_demo_refuse_bad_checkpoints_and_places(command, run, odd, capsys):
    suffix = ".onnx" if command == "export" else ".html"  # export reads its format from -o
    (odd / f"dir{suffix}").mkdir()
    before = files_in(odd)
    out = ["-o", odd / f"out{suffix}"]
    for args, fragments in [
        ([odd / "missing.npz", *out], ["missing.npz: no such checkpoint"]),
        ([odd / "folder", *out], ["folder: no best.npz", "a run folder written by"]),  # not a run folder
        ([odd / "empty.npz", *out], ["empty.npz: not a checkpoint"]),
        ([odd / "text.npz", *out], ["text.npz: not a checkpoint"]),
        ([run / "best.npz", "-o", odd / f"dir{suffix}"],
         [f"cannot write {odd / f'dir{suffix}'}: Is a directory", "choose another output path with -o"]),
        ([run / "best.npz", "-o", odd / "file" / f"x{suffix}"], ["cannot write", "Not a directory"]),
        ([run / "best.npz", "-o", run / "best.npz"], ["is the checkpoint itself"]),
        ([run / "best.npz", "--colour", "red"], ["unrecognized arguments: --colour"]),
    ]:
        check([command, *args], capsys, *fragments)
    assert files_in(odd) == before  # nothing written, not even a temporary
    assert not (run / "best.onnx").exists() and not (run / "best-demo.html").exists()


def test_export_refuses_an_unknown_format(run, capsys):
    check(["export", run, "--format", "tflite"], capsys, "invalid choice: 'tflite'")


def test_predict_names_each_odd_image_in_one_line(run, tmp_path, capsys):
    from PIL import Image

    images = {
        "dot.png": Image.fromarray(np.zeros((1, 1), np.uint8)),
        "black.png": Image.fromarray(np.zeros((40, 40), np.uint8)),
        "clear.png": Image.fromarray(np.zeros((40, 40, 4), np.uint8)),  # all transparent
        "deep.png": Image.fromarray(np.full((40, 40), 40000, np.uint16)),  # 16-bit, flat
        "cmyk.jpg": Image.new("CMYK", (40, 40), (0, 0, 0, 0)),
        "strip.png": Image.fromarray(np.full((3000, 2), 255, np.uint8)),
    }
    for name, image in images.items():
        image.save(tmp_path / name)
    (tmp_path / "empty.png").write_bytes(b"")
    np.save(tmp_path / "array.npy", np.zeros((28, 28)))
    (tmp_path / "folder.png").mkdir()
    digit = np.zeros((40, 40), np.uint8)
    digit[8:32, 18:22] = 255  # a 1
    Image.fromarray(digit).save(tmp_path / "one.png")
    bad = [*images, "empty.png", "array.npy", "folder.png", "missing.png"]
    code = main(["predict", str(run / "best.npz"), str(tmp_path / "one.png"),
                 *(str(tmp_path / name) for name in bad)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out.startswith(f"{tmp_path / 'one.png'}: ")  # the good one is still read
    lines = captured.err.strip().splitlines()
    assert len(lines) == len(bad) and "Traceback" not in captured.err
    for name, line in zip(bad, lines):
        assert line.startswith("fastlenet: error: ") and name in line, line


def test_predict_in_a_real_process_exits_2_on_an_odd_image(run, tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert_one_line_error(run_cli("predict", run, tmp_path / "empty.png"), "empty.png is not an image")


@pytest.mark.parametrize("args, fragment", [
    (["--lr", "1e-3,2e-3", "--jobs", "abc"], "--jobs: not an integer: 'abc'"),
    (["--lr", "1e-3,2e-3", "--jobs", "-1"], "--jobs must be an integer >= 1, got -1"),
    (["--lr", "1e-3,"], "--lr: not a number: ''"),
    (["--lr", ","], "--lr: not a number: ''"),
    (["--batch-size", "0,64"], "--batch-size must be at least 1, got 0"),
    (["--limit", "10,2.5"], "--limit: not an integer: '2.5'"),
    (["--augment", "--augment-rotate", "5,400"], "--augment-rotate must be in [0, 180], got 400.0"),
    (["--backend", "numpy,tpu"], "--backend: invalid choice 'tpu'"),
    (["--target-accuracy", "0.9,99"], "--target-accuracy is a fraction in (0, 1]"),
    (["--resume", "x", "--lr", "1e-3,2e-3"], "--resume continues a sweep with its own settings and folder; drop --lr, --out"),
])
def test_bad_sweep_options_are_one_line_and_make_no_folder(args, fragment, tmp_path, capsys):
    check(["sweep", *args, "--out", tmp_path / "s"], capsys, fragment)
    assert not (tmp_path / "s").exists()


def test_a_sweep_into_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    check(["sweep", "--lr", "1e-3,2e-3", "--out", tmp_path / "file"], capsys,
          "cannot create the sweep folder", "choose another --out")


@pytest.mark.parametrize("args, fragment", [
    (["evaluate", "{run}", "--batch-size", "0"], "batch size must be an integer >= 1 (got 0)"),
    (["evaluate", "{run}", "--data-dir", "{tmp}/nowhere"], "does not exist"),
    (["evaluate", "{run}", "--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["report", "{tmp}/nowhere"], "no such run folder"),
    (["report", "{tmp}"], "no config.json"),
    (["report", "{run}", "--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    (["compare", "{run}", "{tmp}/nowhere"], "no such run folder"),
    (["train", "--resume", "{run}/history.json"], "history.json: not a checkpoint"),
    (["train", "--resume", "{tmp}"], "no such checkpoint"),
    (["train", "--resume", "{run}", "--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["train", "--out", "{run}/best.npz", "--epochs", "1"], "cannot create the run folder"),
])
def test_other_bad_options_are_one_line(args, fragment, run, tmp_path, capsys):
    before = files_in(run)
    check([a.format(run=run, tmp=tmp_path) for a in args], capsys,
          fragment.format(run=run, tmp=tmp_path))
    assert files_in(run) == before


@pytest.mark.parametrize("call, fragment", [
    (lambda x, w: F.conv2d(x.tolist(), w), "x must be an array of shape (N, C=1, H, W), got a list"),
    (lambda x, w: F.conv2d(x, w, stride=0), "stride must be an integer >= 1, got 0"),
    (lambda x, w: F.conv2d(x, w, stride=1.5), "stride must be an integer >= 1, got 1.5"),
    (lambda x, w: F.conv2d(x, w, padding=-1), "padding must be an integer >= 0, got -1"),
    (lambda x, w: F.conv2d(x.astype(np.complex64), w), "x must be float32 or float64, got complex64"),
    (lambda x, w: F.conv2d(x, w[0]), "weight must have 4 axes (K, C, KH, KW)"),
    (lambda x, w: F.conv2d(x, w, backend="tpu"), "unknown backend 'tpu'"),
    (lambda x, w: F.max_pool2d(x, 0), "size must be an integer >= 1, got 0"),
    (lambda x, w: F.avg_pool2d(x, 2, stride=0), "stride must be an integer >= 1, got 0"),
    (lambda x, w: F.linear(x.reshape(2, -1), np.zeros(64, np.float32)), "weight must have 2 axes"),
    (lambda x, w: F.relu([1.0, -1.0]), "x must be an array, got a list"),
    (lambda x, w: F.softmax_cross_entropy(np.zeros(10, np.float32), np.array([1])),
     "logits must have 2 axes (N, K)"),
    (lambda x, w: F.softmax_cross_entropy(np.zeros((3, 10), np.float32), np.array([0, 1, 2]),
                                          label_smoothing=2.0), "label_smoothing must be a number in [0, 1]"),
    (lambda x, w: F.conv2d_backward(np.zeros((2, 6, 4, 4), np.float32), None),
     "ctx must be what conv2d() returned"),
])
def test_functional_bad_arrays_are_one_line(call, fragment):
    x, w = np.zeros((2, 1, 8, 8), np.float32), np.zeros((6, 1, 5, 5), np.float32)
    with pytest.raises(FastLeNetError) as info:
        call(x, w)
    assert "\n" not in str(info.value) and fragment in str(info.value), str(info.value)
