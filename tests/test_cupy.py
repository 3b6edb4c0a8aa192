"""The cupy backend: its CUDA sources, how it fails without a GPU, its kernels against
the NumPy backend (on the CPU, and with marker ``gpu`` on a CUDA device), and training.

Without a GPU the tests here check that every kernels/*.cu file ships in the package and
compiles to PTX with NVRTC (CuPy's bindings to the library of the
``nvidia-cuda-nvrtc-cu12`` wheel need no driver; skipped without CuPy), that asking for
the backend gives one line with the cause, that ``auto`` takes it first when it is
usable, and that the trainer keeps nothing a replayed step overwrites. The kernel tests
run the real backend twice: with its CUDA kernels compiled for and run on the CPU
(tests/host_cuda.py, needs g++), and on a CUDA device (``gpu``). The kernel tests of
test_kernels.py also run on cupy wherever it is usable (the ``backend`` fixture). The
``gpu`` tests alone cover CUDA graph capture, resume, and full-MNIST accuracy.
"""

import json
import re
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fastlenet import backends
from fastlenet.backends.numpy_backend import NumpyBackend
from fastlenet.errors import BackendUnavailableError
from fastlenet.train import TrainConfig, Trainer, train

from conftest import load_cuda_backend
from test_cli import assert_one_line_error, run_cli

ROOT = Path(__file__).resolve().parents[1]
KERNEL_FILES = sorted(ROOT.glob("kernels/*.cu"))


def _cupy_module():
    """fastlenet.backends.cupy_backend, or a skip when CuPy is not installed."""
    pytest.importorskip("cupy", reason="CuPy is not installed (pip install 'fastlenet[cupy-cuda12]')")
    from fastlenet.backends import cupy_backend
    return cupy_backend


# ------------------------------------------------------------ sources and package
def test_every_kernel_source_ships_in_the_package():
    try:
        from fastlenet.kernels import sources
    except ModuleNotFoundError:
        pytest.fail("fastlenet.kernels (the kernels/ folder) is not importable: install this "
                    "checkout with python -m pip install -e . (pyproject.toml maps the folder)")

    assert KERNEL_FILES, "no kernels/*.cu in the repository"
    shipped = sources()
    assert sorted(shipped) == [path.stem for path in KERNEL_FILES]
    for path in KERNEL_FILES:
        assert shipped[path.stem] == path.read_text(encoding="utf-8"), path.name


def test_wheel_holds_every_module_and_kernel(tmp_path):
    setuptools = pytest.importorskip("setuptools", reason="building the wheel needs setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"building the wheel needs setuptools >= 77 (found {setuptools.__version__})")
    source = tmp_path / "src"  # a clean copy: no build/ or egg-info left in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "runs", "tests"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                             "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(source)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").glob("fastlenet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"fastlenet/kernels/{path.name}" for path in KERNEL_FILES}
    expected |= {path.relative_to(ROOT).as_posix() for path in (ROOT / "fastlenet").rglob("*.py")}
    expected |= {path.relative_to(ROOT).as_posix() for path in (ROOT / "fastlenet" / "static").iterdir()}
    assert expected <= names, sorted(expected - names)


def _nvrtc():
    """CuPy's NVRTC bindings with a loadable library, or a skip saying what is missing."""
    _cupy_module()
    from cupy_backends.cuda.libs import nvrtc
    try:
        nvrtc.getVersion()
    except Exception as exc:  # the library itself is absent: no nvidia-cuda-nvrtc wheel or toolkit
        pytest.skip(f"the NVRTC library is not installed ({type(exc).__name__}: {exc}); "
                    "pip install nvidia-cuda-nvrtc-cu12")
    return nvrtc


@pytest.mark.parametrize("arch", ["75", "80", "90"])
@pytest.mark.parametrize("path", KERNEL_FILES, ids=lambda p: p.name)
def test_kernel_compiles_to_ptx_without_warnings(path, arch):
    nvrtc = _nvrtc()
    cupy_backend = _cupy_module()
    program = nvrtc.createProgram(path.read_text(encoding="utf-8"), path.name, (), ())
    try:
        try:
            nvrtc.compileProgram(program, (f"-arch=compute_{arch}",
                                           *cupy_backend.OPTIONS.get(path.stem, ())))
        except nvrtc.NVRTCError:
            pytest.fail(f"{path.name} does not compile:\n{nvrtc.getProgramLog(program)}")
        log = nvrtc.getProgramLog(program).strip()
        assert "warning" not in log, log
        ptx = nvrtc.getPTX(program).decode()
    finally:
        nvrtc.destroyProgram(program)
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx))
    assert set(cupy_backend.entry_points()[path.stem]) <= entries


def test_every_kernel_file_is_used_by_the_backend():
    cupy_backend = _cupy_module()
    assert sorted(cupy_backend.KERNELS) == [path.stem for path in KERNEL_FILES]


@pytest.mark.parametrize("stem, define", [("conv2d", "WEIGHT_THREADS"), ("dense", "ROW_THREADS")])
def test_reduction_blocks_fit_their_shared_arrays(stem, define):
    """The launcher's block size must be the power of two the shared arrays are sized for."""
    cupy_backend = _cupy_module()
    text = (ROOT / "kernels" / f"{stem}.cu").read_text(encoding="utf-8")
    size = int(re.search(rf"#define {define} (\d+)", text).group(1))
    assert cupy_backend.REDUCE_THREADS == size and size & (size - 1) == 0


# ---------------------------------------------------------- fallback and registry
def _cupy_status():
    return backends.status()["cupy"]


def test_unusable_cupy_is_one_line_with_the_cause_and_the_usable_backends():
    why = _cupy_status()
    if why is None:
        pytest.skip("cupy is usable here")
    with pytest.raises(BackendUnavailableError) as info:
        backends.get_backend("cupy")
    message = str(info.value)
    assert message.startswith("backend 'cupy' is not usable here (") and "\n" not in message
    assert message.endswith(f"; usable backends: {', '.join(backends.usable())}")
    try:
        import cupy  # noqa: F401
    except ImportError:
        assert "pip install 'fastlenet[cupy-cuda12]'" in message
    else:
        assert "CUDA device" in message or "NVRTC" in message.upper()


def test_cli_without_cupy_device_names_the_cause(tmp_path):
    if _cupy_status() is None:
        pytest.skip("cupy is usable here")
    result = run_cli("train", "--backend", "cupy", "--epochs", "1", "--out", tmp_path / "run")
    assert_one_line_error(result, "fastlenet: error: backend 'cupy' is not usable here (",
                          f"usable backends: {', '.join(backends.usable())}")
    assert not (tmp_path / "run").exists()


def test_no_cuda_device_makes_the_backend_unusable(monkeypatch):
    cupy_backend = _cupy_module()
    monkeypatch.setattr(backends, "_instances", {})
    monkeypatch.setattr(backends, "_failures", {})
    monkeypatch.setattr(cupy_backend.cupy.cuda.runtime, "getDeviceCount", lambda: 0)
    with pytest.raises(BackendUnavailableError) as info:
        backends.get_backend("cupy")
    assert str(info.value) == ("backend 'cupy' is not usable here (RuntimeError: CuPy finds no "
                               f"CUDA device); usable backends: {', '.join(backends.usable())}")


def test_auto_picks_cupy_first_when_it_is_usable(monkeypatch):
    """A stand-in module at the registry's cupy entry: auto must take it over numpy."""
    module_name, class_name = backends._REGISTRY["cupy"]
    assert list(backends._REGISTRY)[0] == "cupy"

    class StandIn(NumpyBackend):
        name = "cupy"

    module = types.ModuleType(module_name)
    setattr(module, class_name, StandIn)
    monkeypatch.setitem(sys.modules, module_name, module)
    monkeypatch.setattr(backends, "_instances", {})
    monkeypatch.setattr(backends, "_failures", {})
    assert backends.get_backend("auto").name == "cupy"
    assert backends.usable()[0] == "cupy"


# ------------------------------------------- the trainer's side of capture_step
def tiny_config(tiny_dir, **kw):
    base = dict(dataset="custom", data_dir=str(tiny_dir), epochs=1, batch_size=64, val_size=200,
                seed=5, log_every=4)
    return TrainConfig(**{**base, **kw})


def _overwriting_capture(step):
    """Stands in for a graph replay: outputs become arrays that the next call overwrites."""
    previous = []

    def run(*inputs):
        for array in previous:
            array[...] = np.nan
        outputs = tuple(None if o is None else np.array(o) for o in step(*inputs))
        previous[:] = [o for o in outputs if o is not None and o.dtype.kind == "f"]
        return outputs
    return run


@pytest.mark.parametrize("model", ["lenet5", "compact"])
def test_trainer_keeps_nothing_that_the_next_captured_step_overwrites(tiny_dir, tmp_path,
                                                                      monkeypatch, model):
    config = tiny_config(tiny_dir, model=model, backend="numpy")
    plain = train(config, out=tmp_path / "plain", log=None)
    monkeypatch.setattr(backends.get_backend("numpy"), "capture_step", _overwriting_capture)
    replayed = train(config, out=tmp_path / "replayed", log=None)
    assert replayed["test_accuracy"] == plain["test_accuracy"]
    steps = lambda run: json.loads((tmp_path / run / "history.json").read_text())["steps"]
    assert steps("replayed") == steps("plain")


# ------------------------------------------------ kernels, on the CPU and on the GPU
@pytest.fixture
def cupy_backend():
    """The real backend on a CUDA device, or a skip giving the reason."""
    why = _cupy_status()
    if why is not None:
        pytest.skip(why)
    return backends.get_backend("cupy")


@pytest.fixture(scope="module", params=["on-cpu", pytest.param("device", marks=pytest.mark.gpu)])
def cuda_backend(request):
    """The cupy backend with its kernels run on the CPU (tests/host_cuda.py), and on the GPU.
    (Its kernels against the NumPy backend: test_kernels.py's random-shape tests.)"""
    return load_cuda_backend(request.param)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_generator_is_uniform_and_its_state_restores(cuda_backend, dtype):
    rng = cuda_backend.default_rng(7)
    u = cuda_backend.to_numpy(rng.random((1000, 1001), dtype=dtype))
    assert u.dtype == dtype and u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 2e-3 and abs(u.var() - 1 / 12) < 2e-3
    assert abs(np.corrcoef(u.ravel()[:-1], u.ravel()[1:])[0, 1]) < 5e-3
    state = cuda_backend.rng_state(rng)
    json.dumps(state)  # goes into checkpoint metadata
    first = cuda_backend.to_numpy(rng.random(257, dtype=dtype))
    again = cuda_backend.default_rng(0)
    cuda_backend.set_rng_state(again, state)
    np.testing.assert_array_equal(cuda_backend.to_numpy(again.random(257, dtype=dtype)), first)
    assert not np.array_equal(cuda_backend.to_numpy(rng.random(257, dtype=dtype)), first)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_generator_draws_standard_normals(cuda_backend, dtype):
    rng = cuda_backend.default_rng(8)
    drawn = cuda_backend.to_numpy(rng.standard_normal((1000, 1001), dtype=dtype))
    assert drawn.dtype == dtype and np.isfinite(drawn).all()
    z = drawn.astype(np.float64)
    assert abs(z.mean()) < 5e-3 and abs(z.var() - 1) < 5e-3
    assert abs((np.abs(z) > 1.96).mean() - 0.05) < 2e-3  # the tails of a normal
    assert abs(np.corrcoef(z.ravel()[:-1], z.ravel()[1:])[0, 1]) < 5e-3


def _history(out):
    return json.loads((Path(out) / "history.json").read_text())


def test_training_losses_match_numpy(cuda_backend, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(backends._instances, "cupy", cuda_backend)
    for name in ("numpy", "cupy"):  # 10 steps: the CPU runs the kernels slowly
        train(tiny_config(tiny_dir, epochs=2, train_limit=320, backend=name), out=tmp_path / name,
              log=None)
    want = [s["loss"] for s in _history(tmp_path / "numpy")["steps"]]
    got = [s["loss"] for s in _history(tmp_path / "cupy")["steps"]]
    assert len(got) == len(want) == 2 * 5
    np.testing.assert_allclose(got, want, rtol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["lenet5", "compact"])  # compact: dropout draws, BatchNorm
def test_captured_steps_equal_uncaptured_steps(cupy_backend, tiny_dir, tmp_path, monkeypatch,
                                              model):
    """1,000 images in batches of 64: two graphs (15 full batches, one of 40)."""
    config = tiny_config(tiny_dir, epochs=2, model=model, backend="cupy")
    from fastlenet.backends.cupy_backend import _CapturedStep

    captured = Trainer(config, out=tmp_path / "captured", log=None)
    assert isinstance(captured._forward_backward, _CapturedStep)
    captured.run()
    monkeypatch.setattr(cupy_backend, "capture_step", lambda step: step)
    plain = Trainer(config, out=tmp_path / "plain", log=None)
    plain.run()
    assert _history(tmp_path / "captured")["steps"] == _history(tmp_path / "plain")["steps"]
    for key, value in plain.model.state_dict().items():
        np.testing.assert_array_equal(captured.model.state_dict()[key], value, err_msg=key)


@pytest.mark.gpu
def test_resume_on_the_gpu_equals_an_uninterrupted_run(cupy_backend, tiny_dir, tmp_path):
    config = tiny_config(tiny_dir, epochs=3, model="compact", backend="cupy")
    train(config, out=tmp_path / "straight", log=None)
    train(config, out=tmp_path / "interrupted", log=None,
          on_epoch_end=lambda record: record["epoch"] == 1)
    train(resume=tmp_path / "interrupted", log=None)
    assert _history(tmp_path / "straight")["steps"] == _history(tmp_path / "interrupted")["steps"]


@pytest.mark.gpu
@pytest.mark.slow
def test_full_mnist_on_the_gpu_reaches_99_percent(cupy_backend, tmp_path):
    metrics = train(TrainConfig(backend="cupy"), out=tmp_path / "run", log=None)
    assert metrics["test_accuracy"] >= 0.99
