"""Keep the benchmark suite (benchmarks/) honest: it runs, its checks catch a wrong kernel,
its measurements parse, and the render script turns a results file into the right tables.

Fast by construction: the op, step and epoch benchmarks run once each
(``--benchmark-disable``) on the NumPy backend at batch 8 and on 256 images; the
footprint child trains two steps; the render reads a small synthetic results file.
"""

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastlenet import backends
from fastlenet.backends.numpy_backend import NumpyBackend

from benchmarks import render
from benchmarks.lenet import time_to_accuracy
from benchmarks.ops import assert_close, conv_inputs, measure

ROOT = Path(__file__).resolve().parents[1]


def run(*command, timeout=300):
    return subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_op_step_and_epoch_benchmarks_run_once_on_numpy():
    pytest.importorskip("pytest_benchmark")
    done = run("-m", "pytest", "benchmarks", "-k", "not time_to_accuracy and not startup and "
               "not peak_memory", "--benchmark-disable", "--contenders", "numpy",
               "--batch-sizes", "8", "--epoch-images", "256", "--step-rounds", "2",
               "-q", "-p", "no:cacheprovider")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # the op cases (6 convs x 2, 2 conv blocks, 2 max-pools x 4, 3 batch norms x 2,
    # 2 batch-norm blocks x 2, 2 average pools x 2, 3 tanh x 2, 3 linears x 2, loss, Adam:
    # 50), and a step and an epoch of each of the 3 models
    assert "56 passed" in done.stdout


def test_unknown_contender_is_one_clear_line():
    pytest.importorskip("pytest_benchmark")
    done = run("-m", "pytest", "benchmarks", "--contenders", "tpu", "-q", "-p", "no:cacheprovider")
    assert done.returncode != 0
    assert "--contenders: unknown contender 'tpu'; choose from: " in done.stdout + done.stderr


class _Benchmark:
    """Stands in for pytest-benchmark's fixture: calls the function once, untimed."""

    group, stats = None, None

    def __init__(self):
        self.extra_info = {}

    def __call__(self, function):
        return function()


def test_op_check_catches_a_wrong_kernel(monkeypatch):
    class OffByALittle(NumpyBackend):
        name = "off"

        def conv2d_forward(self, x, w, b, stride, pad):
            y, ctx = super().conv2d_forward(x, w, b, stride, pad)
            return y * np.float32(1.001), ctx

    monkeypatch.setattr(backends, "_instances", {**backends._instances, "off": OffByALittle()})
    monkeypatch.setattr(backends, "_REGISTRY", {**backends._REGISTRY, "off": ("", "")})
    x, w, b, pad, _, _ = conv_inputs("conv2", 4)
    measure(_Benchmark(), "numpy", "conv2d_forward", "conv2", (x, w, b, pad), 4)  # passes
    with pytest.raises(AssertionError, match="off conv2d_forward conv2: result 0 differs"):
        measure(_Benchmark(), "off", "conv2d_forward", "conv2", (x, w, b, pad), 4)


def test_assert_close_tolerance_and_shapes():
    want = np.linspace(-2, 2, 50, dtype=np.float32)
    assert_close([want + 1e-4], [want], "tiny rounding")  # 1e-4 < 2e-4 * max |want|
    with pytest.raises(AssertionError, match="differs"):
        assert_close([want + 1e-2], [want], "wrong")
    with pytest.raises(AssertionError, match="shape"):
        assert_close([want[:-1]], [want], "short")
    with pytest.raises(AssertionError, match="results"):
        assert_close([], [want], "missing")


def test_time_to_accuracy_reads_the_first_epoch_at_the_target():
    epochs = [{"epoch": 1, "test_accuracy": 0.965, "train_seconds": 7.0},
              {"epoch": 2, "test_accuracy": 0.981, "train_seconds": 14.5},
              {"epoch": 3, "test_accuracy": 0.975, "train_seconds": 21.0},
              {"epoch": 4, "test_accuracy": 0.990, "train_seconds": 28.0}]
    assert time_to_accuracy(epochs, 0.97) == {"epoch": 2, "seconds": 14.5, "test_accuracy": 0.981}
    assert time_to_accuracy(epochs, 0.99)["epoch"] == 4  # exactly at the target counts
    assert time_to_accuracy(epochs, 0.995) is None


@pytest.mark.slow  # two trainings and PyTorch's import
@pytest.mark.torch
def test_torch_recipe_follows_the_fastlenet_recipe(tmp_path, monkeypatch):
    """Same split, initial weights, order and learning rates: the same test accuracy
    after a short run (the recipe shortened: 512 images, 2 epochs, 500 held out)."""
    pytest.importorskip("torch")
    from fastlenet.config import TrainConfig

    from benchmarks import lenet, torch_contenders

    monkeypatch.setattr(lenet, "TrainConfig",
                        functools.partial(TrainConfig, train_limit=512, epochs=2, val_size=500))
    monkeypatch.setattr(torch_contenders, "torch_threads", 1)
    ours = lenet.fastlenet_recipe("numpy", 0, tmp_path / "run")
    theirs = lenet.torch_recipe(0)
    assert [r["epoch"] for r in ours] == [r["epoch"] for r in theirs] == [1, 2]
    for a, b in zip(ours, theirs):
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=0.003)
        assert b["train_seconds"] >= b["epoch_seconds"] > 0


def test_footprint_reports_a_fresh_process():
    done = run("-m", "benchmarks.footprint", "numpy", "--images", "256", "--steps", "2",
               "--batch-size", "64")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["contender"] == "numpy" and report["images"] == 256 and report["steps"] == 2
    assert 0 < report["first_step_s"] < report["to_first_step_s"]
    assert report["peak_rss_mb"] >= report["rss_before_steps_mb"] > 10
    if report["training_peak_rss_mb"] is not None:  # Linux
        assert report["rss_before_steps_mb"] <= report["training_peak_rss_mb"] <= report["peak_rss_mb"]
    bad = run("-m", "benchmarks.footprint", "tpu", "--images", "256")
    assert bad.returncode == 2 and "footprint: error: cannot measure 'tpu'" in bad.stderr


# ---------------------------------------------------------------------- render
def _bench(group, params, median, **extra):
    return {"group": group, "name": f"test[{params['contender']}]", "params": params,
            "stats": {"median": median}, "extra_info": extra}


def synthetic_results() -> dict:
    """A results file shaped like pytest-benchmark's, with this suite's extra_info."""
    peak = {"rss_before_steps_mb": 300.0, "peak_rss_mb": 700.0}
    startup = {"cold": {"first_step_s": 5.0}, "warm": {"first_step_s": 0.05, "to_first_step_s": 2.5}}
    return {
        "machine_info": {"fastlenet": {"cpu": "Test CPU 9000", "cores": 2,
                                       "versions": {"numpy": "2.4.6", "torch": "2.13.0"},
                                       "blas": [{"name": "openblas", "version": "0.3.31",
                                                 "num_threads": 2}]}},
        "conditions": {"date": "2026-11-23T01:00:00+00:00", "contenders": ["numba", "numpy", "torch"],
                       "load_average_at_start": [0.5, 0.4, 0.3], "load_average_at_end": [1.5, 1.0, 0.5],
                       "torch_threads": 2},
        "benchmarks": [
            _bench("training step", {"contender": "numba"}, 0.02, images=128, images_per_second=6400),
            _bench("training step", {"contender": "torch"}, 0.04, images=128, images_per_second=3200),
            _bench("epoch", {"contender": "numba"}, 2.0, images=60000, images_per_second=30000,
                   ratio_to_torch=0.48),
            _bench("epoch", {"contender": "torch"}, 4.0, images=60000, images_per_second=15000),
            _bench("time to accuracy", {"contender": "numba"}, 30.0, seed=0,
                   to_97={"epoch": 2, "seconds": 14.0}, to_99=None,
                   epochs=[{"epoch": 11, "test_accuracy": 0.9881, "epoch_seconds": 3.0},
                           {"epoch": 12, "test_accuracy": 0.9893, "epoch_seconds": 2.0}]),
            _bench("time to accuracy", {"contender": "torch"}, 60.0, seed=0,
                   to_97={"epoch": 2, "seconds": 28.0}, to_99={"epoch": 9, "seconds": 126.0},
                   epochs=[{"epoch": 9, "test_accuracy": 0.9901, "epoch_seconds": 14.0}]),
            _bench("peak memory", {"contender": "numba", "memory_batch": 128}, 3.0,
                   training_peak_rss_mb=320.0, images=60000, **peak),
            _bench("peak memory", {"contender": "torch", "memory_batch": 128}, 3.0,
                   training_peak_rss_mb=640.0, images=60000, **peak),
            _bench("startup", {"contender": "numba"}, 3.0, **startup),
            _bench("conv2d_forward conv2", {"contender": "numba", "batch": 128, "layer": "conv2"},
                   0.001, op="conv2d_forward", layer="conv2", images=128, first_call_s=4.0),
            _bench("conv2d_forward conv2", {"contender": "numpy", "batch": 128, "layer": "conv2"},
                   0.004, op="conv2d_forward", layer="conv2", images=128, first_call_s=0.01),
            _bench("conv2d_forward conv2", {"contender": "torch", "batch": 128, "layer": "conv2"},
                   0.002, op="conv2d_forward", layer="conv2", images=128, first_call_s=0.3),
            _bench("adam_update", {"contender": "numba"}, 0.0005, op="adam_update", layer=None,
                   images=None, first_call_s=1.0),
            {"group": None, "name": "test_other", "params": None, "stats": {"median": 1.0},
             "extra_info": {}},  # not this suite's: ignored
        ],
    }


def test_render_tables_and_chart(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(synthetic_results()))
    out = tmp_path / "results.md"
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    args = [str(results), "-o", str(out)] + ([] if has_matplotlib else ["--no-chart"])
    assert render.main(args) == 0
    text = out.read_text()
    assert "Machine: Test CPU 9000, 2 cores; BLAS: openblas 0.3.31 (2 threads)." in text
    assert "load average 0.5 at the start, 1.5 at the end" in text
    # step ratio from the two medians; epoch ratio the interleaved one, not 2.0 / 4.0
    assert "| fastlenet `numba` | 20 ms | 6,400 | 0.50x | 2.00 s | 30,000 | 0.48x |" in text
    assert "| PyTorch (CPU) | 40 ms | 3,200 | 1.00x | 4.00 s | 15,000 | 1.00x |" in text
    # 14 s is 0.50x PyTorch's 28 s and 3.3% of the coursework's 420 s; 99% never reached
    assert ("| fastlenet `numba` | 14.0 s (epoch 2) | 0.50x | 3.3% | not reached | – | – | "
            "2.50 s | 98.93% |") in text
    assert "| fastlenet `numba` | 320 MB | 0.50x | – | – | 300 MB | 700 MB | 5.00 s | 50 ms | 2.50 s |" in text
    assert "| conv2d_forward | conv2 | 128 | 1 ms | 4 ms | 2 ms | 0.50x | 2.00x |" in text
    assert "| adam_update |  | – | 500 µs | – | – | – | – |" in text
    assert "| fastlenet `numba` | 4.00 s | conv2d_forward conv2 | 5.00 s |" in text
    assert "test_other" not in text
    if has_matplotlib:
        assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("content, message", [
    ("not json", "is not readable JSON"),
    ('{"machine_info": {}}', "is not a pytest-benchmark results file"),
    ('{"benchmarks": []}', "holds no fastlenet benchmarks"),
])
def test_render_rejects_bad_input_in_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "r.json"
    path.write_text(content)
    assert render.main([str(path), "--no-chart"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("render: error: ") and message in err and err.count("\n") == 1


def test_render_names_a_missing_file(tmp_path, capsys):
    assert render.main([str(tmp_path / "nope.json"), "--no-chart"]) == 2
    assert "nope.json does not exist; save a run with" in capsys.readouterr().err


def test_pytorch_cuda_contenders_run_or_skip_saying_why():
    """Where PyTorch sees no CUDA device its CUDA contenders skip with the reason, and the
    CPU one runs the same step benchmark; where it sees one, all three run (untimed). Each
    runs the step of every model of the suite (lenet.MODELS: 3)."""
    pytest.importorskip("pytest_benchmark")
    torch = pytest.importorskip("torch")
    done = run("-m", "pytest", "benchmarks/test_training.py", "-k", "training_step and torch",
               "--benchmark-disable", "--epoch-images", "256", "--step-rounds", "2", "-rs",
               "-q", "-p", "no:cacheprovider")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    if torch.cuda.is_available():
        assert "9 passed" in done.stdout
    else:
        assert "3 passed, 6 skipped" in done.stdout
        for name in ("torch-cuda", "torch-cuda-graphs"):
            assert (f"{name} needs a CUDA device, and PyTorch {torch.__version__} sees none"
                    in done.stdout)


def test_a_pytorch_cuda_contender_asked_for_without_cuda_is_one_clear_line():
    pytest.importorskip("pytest_benchmark")
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("PyTorch sees a CUDA device here")
    done = run("-m", "pytest", "benchmarks", "--contenders", "numpy,torch-cuda", "-q",
               "-p", "no:cacheprovider")
    assert done.returncode != 0
    assert "--contenders: torch-cuda needs a CUDA device" in done.stdout + done.stderr


# ------------------------------------------------------------------ gpu_check
def _outputs_fit_the_device_tool(out: Path) -> list[str]:
    """At most 8 plain files, each at most 16 MiB, no folders: what comes back."""
    entries = list(out.iterdir())
    assert len(entries) <= 8 and all(e.is_file() for e in entries), entries
    assert all(e.stat().st_size <= 16 << 20 for e in entries)
    return sorted(e.name for e in entries)


def test_gpu_check_without_a_gpu_says_so_writes_its_summary_and_fails(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable,
                               "FASTLENET_GPU_CHECK_INSTALL": "0"})
    if "FAILED: device" not in done.stdout:
        pytest.skip("this machine has a CUDA device: the full check runs with benchmarks/gpu_check.sh")
    assert done.returncode == 1
    summary = (out / "summary.txt").read_text().splitlines()
    assert summary[0] == "fastlenet GPU check: FAILED: device"
    assert summary[2].startswith("FAILED      device") and "no CUDA device" in summary[2]
    assert all(line.startswith("NOT RUN") and line.endswith("not run: no CUDA device")
               for line in summary[3:16])
    assert "  epoch <= 0.5x PyTorch CUDA eager: not measured" in summary
    results = json.loads((out / "results.json").read_text())
    assert results["failed"] == ["device"] and len(results["stages"]) == 14
    assert _outputs_fit_the_device_tool(out) == ["info.log", "results.json", "summary.txt"]


def test_gpu_check_records_a_failed_stage_and_goes_on(tmp_path):
    """GPU stages run anyway on a machine without one: each fails (or finds its tool
    missing), is recorded with why, and the next still runs."""
    from benchmarks import gpu_check

    out = tmp_path / "out"
    status = gpu_check.main([str(out), "--stages", "info,train,memcheck", "--budget", "200"])
    results = {s["name"]: s for s in json.loads((out / "results.json").read_text())["stages"]}
    if results["info"]["status"] == "passed":
        pytest.skip("the cupy backend is usable here")
    assert status == 1 and list(results) == ["info", "train", "memcheck"]
    assert results["info"]["note"] == "the cupy backend is not usable (see info.log)"
    assert results["train"]["status"] == "failed" and results["train"]["seconds"] > 0
    assert "backend 'cupy' is not usable here" in (out / "train.log").read_text()
    assert results["memcheck"]["status"] in ("unavailable", "failed")
    _outputs_fit_the_device_tool(out)


def test_gpu_kernels_sums_ncus_launches_per_kernel_and_step():
    from benchmarks.gpu_kernels import format_kernels, ncu_kernels

    header = '"ID","Kernel Name","Grid Size","Metric Name","Metric Unit","Metric Value"'
    rows = [f'"{i}","{name}","({grid}, 1, 1)","gpu__time_duration.sum","ns","{ns}"'
            for i, (name, grid, ns) in enumerate([("gemm_f32", 60, "1,500"), ("conv", 800, "40,000"),
                                                   ("gemm_f32", 60, "2,500"), ("gemm_f32", 188, "900"),
                                                   ("conv", 800, "44,000")])]
    text = "==PROF== Connected to process\n" + "\n".join([header, *rows]) + "\n"
    kernels = ncu_kernels(text, steps=2)
    assert [(k["kernel"], k["grid"], k["launches_per_step"], k["us_per_step"]) for k in kernels] == [
        ("conv", "(800, 1, 1)", 1.0, 42.0), ("gemm_f32", "(60, 1, 1)", 1.0, 2.0),
        ("gemm_f32", "(188, 1, 1)", 0.5, 0.45)]
    assert format_kernels(kernels).splitlines()[0] == "44.5 us of kernels per step, 2 launches"
    assert ncu_kernels("no CSV here\n") == []


def test_gpu_kernels_reads_a_recorded_ncu_file():
    """The committed H200 profile: the figures its README quotes."""
    from benchmarks.gpu_kernels import ncu_kernels

    folder = ROOT / "benchmarks" / "results" / "2026-11-30-nvidia-h200-gpu-check-3"
    ours = ncu_kernels((folder / "ncu-step-kernels.csv").read_text())
    assert round(sum(k["us_per_step"] for k in ours)) == 517
    assert (ours[0]["kernel"], ours[0]["grid"], round(ours[0]["us_per_step"])) == \
        ("conv2d_forward_f32", "(800, 1, 1)", 134)
    torch = ncu_kernels((folder / "ncu-step-kernels-torch-cuda-graphs.csv").read_text())
    assert round(sum(k["us_per_step"] for k in torch)) == 583
    assert sum(k["launches_per_step"] for k in torch) == 85


def test_gpu_kernels_needs_something_to_run(capsys):
    from benchmarks.gpu_kernels import main

    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2 and "say what to run: launches, --sweep, --ncu or several" in capsys.readouterr().err


def test_gpu_check_targets_read_the_figures():
    from benchmarks.gpu_check import Stage, targets
    from fastlenet.runs import Run

    # the time to 99% gpu_check reports is the run folder's (fastlenet.runs)
    epochs = [{"epoch": 1, "test_accuracy": 0.985, "train_seconds": 0.4},
              {"epoch": 2, "test_accuracy": 0.991, "train_seconds": 0.8}]
    run = Run(Path("."), {}, {"steps": [], "epochs": epochs})
    assert run.time_to(0.99) == (0.8, 2) and run.time_to(0.995) is None
    lines = targets({"train": Stage("train", figures={"test_accuracy": 0.991, "seconds_to_99": 1.6}),
                     "bench": Stage("bench", figures={"epoch_cupy_vs_torch-cuda": 0.41,
                                                      "epoch_cupy_vs_torch-cuda-graphs": 1.2})})
    assert lines == ["test accuracy >= 99.0%: MET (99.10%)", "99% within 1 s of training: NOT MET (1.60 s)",
                     "epoch <= 0.5x PyTorch CUDA eager: MET (0.41x)",
                     "epoch < PyTorch CUDA graphs: NOT MET (1.20x)"]


def test_every_gpu_sweep_setting_names_a_constant_that_exists():
    """The launch-constant sweep sets each name of SETTINGS on a module; a renamed
    constant would stop a GPU check's sweep midway. (The cupy backend's module imports
    wherever CuPy is installed, GPU or not.)"""
    pytest.importorskip("cupy", reason="the cupy backend's module needs CuPy installed")
    from benchmarks.gpu_kernels import SETTINGS, SWITCH, _constant

    for setting, change in SETTINGS.items():
        for name, value in change.items():
            if name != SWITCH:
                module, attribute = _constant(name)
                assert isinstance(getattr(module, attribute), int), (setting, name)
                assert type(value) is type(getattr(module, attribute)), (setting, name)
