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

import importlib.util
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
from fastlenet.config import TrainConfig
from fastlenet.errors import BackendUnavailableError
from fastlenet.evaluation import evaluate
from fastlenet.train import Trainer, train

from helpers import assert_one_line_error, load_cuda_backend, run_cli, skip_unless_cuda_device

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


@pytest.mark.parametrize("stem, define", [("conv2d", "WEIGHT_THREADS"), ("dense", "ROW_THREADS"),
                                          ("loss", "LOSS_THREADS"),
                                          ("batchnorm", "BN_THREADS")])
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


# ------------------------------------------------- start-up checks and info
def _host_cuda():
    if shutil.which("g++") is None or importlib.util.find_spec("fastlenet.kernels") is None:
        pytest.skip("the host emulation needs g++ and an installed checkout")
    import host_cuda
    return host_cuda


@pytest.mark.parametrize("broken, what", [
    ("matmul", "CuPy cannot run a matrix product (cuBLAS) here (OSError: libcublas.so.12: "
               "cannot open shared object file"),
    ("compile", "NVRTC cannot compile kernels/"),
])
def test_a_missing_cuda_library_makes_the_backend_unusable_with_the_cause(monkeypatch, broken,
                                                                         what):
    host_cuda = _host_cuda()
    fake = host_cuda.make_module()

    def missing(*args, **kwargs):
        raise OSError("libcublas.so.12: cannot open shared object file: No such file or directory")
    if broken == "matmul":
        fake.matmul = missing
    else:
        class NoNvrtc(host_cuda.RawModule):
            def compile(self):
                raise RuntimeError("CUDA_ERROR_NOT_FOUND: libnvrtc.so.12 not found")
        fake.RawModule = NoNvrtc
    module = host_cuda.load_module(fake)
    monkeypatch.setitem(sys.modules, "fastlenet.backends.cupy_backend", module)
    monkeypatch.setattr(backends, "_instances", {})
    monkeypatch.setattr(backends, "_failures", {})
    with pytest.raises(BackendUnavailableError) as info:
        backends.get_backend("cupy")
    message = str(info.value)
    assert message.startswith(f"backend 'cupy' is not usable here (RuntimeError: {what}")
    assert "pip install 'fastlenet[cupy-cuda12]'" in message and "\n" not in message


FACTS = {"name": "NVIDIA H200", "index": 0, "count": 1, "memory_bytes": 150_110_011_392,
         "compute_capability": "9.0", "runtime_version": 13000, "driver_version": 13000,
         "driver_release": "580.159.04", "cupy": "14.2.0", "nvrtc": "13.0"}


def test_device_description_names_device_memory_cuda_driver_and_cupy():
    module = _host_cuda().load_module()
    assert module.describe_device(FACTS) == (
        "NVIDIA H200 (device 0 of 1), 139.8 GiB, compute capability 9.0; CUDA runtime 13.0, "
        "driver 580.159.04 (CUDA 13.0); CuPy 14.2.0, NVRTC 13.0")
    bare = {**FACTS, "driver_release": None, "nvrtc": None, "runtime_version": 12080}
    assert module.describe_device(bare).endswith(
        "CUDA runtime 12.8, driver for CUDA 13.0; CuPy 14.2.0")


def test_device_facts_read_the_runtime(tmp_path, monkeypatch):
    host_cuda = _host_cuda()
    fake = host_cuda.make_module()
    props = {"name": b"NVIDIA H200", "totalGlobalMem": FACTS["memory_bytes"], "major": 9,
             "minor": 0}
    fake.cuda.runtime.getDeviceProperties = lambda index: props
    fake.cuda.runtime.runtimeGetVersion = lambda: 13000
    fake.cuda.runtime.driverGetVersion = lambda: 13000
    fake.cuda.Device = lambda: types.SimpleNamespace(id=0)
    fake.cuda.nvrtc = types.SimpleNamespace(getVersion=lambda: (13, 0))
    fake.__version__ = "14.2.0"
    module = host_cuda.load_module(fake)
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  "
                       "Release Build  (dvs-builder@U22)  Thu Oct 30 2025\n")
    monkeypatch.setattr(module, "_driver_release", lambda: module._release_of(str(version)))
    assert module._release_of(str(version)) == "580.159.04"
    assert module._release_of(str(tmp_path / "absent")) is None
    assert module.device_facts() == FACTS


def test_info_prints_the_device_of_a_gpu_backend(monkeypatch):
    class StandIn(NumpyBackend):
        name = "cupy"

        def device_description(self):
            return "NVIDIA H200 (device 0 of 1), 139.8 GiB"

    monkeypatch.setattr(backends, "_instances", {**backends._instances, "cupy": StandIn()})
    monkeypatch.setattr(backends, "_failures", {})
    from fastlenet import cli

    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["info"]) == 0
    lines = out.getvalue().splitlines()
    at = lines.index("  cupy   usable")
    assert lines[at + 1] == "         device: NVIDIA H200 (device 0 of 1), 139.8 GiB"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_set_scalars_writes_host_numbers_rounded_to_the_array(cuda_backend, dtype):
    out = cuda_backend.xp.zeros(3, dtype=dtype)
    cuda_backend.set_scalars(out, [0.1, 1e-8, -3.0])
    np.testing.assert_array_equal(cuda_backend.to_numpy(out), np.array([0.1, 1e-8, -3.0], dtype))
    with pytest.raises(ValueError, match="1 to 4 elements"):
        cuda_backend.set_scalars(out, [1.0, 2.0])


def test_a_gpu_test_fails_where_a_device_exists_but_the_backend_does_not_work(monkeypatch):
    import helpers

    monkeypatch.setattr(helpers, "cuda_device_present", lambda: True)
    with pytest.raises(pytest.fail.Exception, match="has an NVIDIA GPU, but backend 'cupy'"):
        skip_unless_cuda_device("backend 'cupy' is not usable here (...)")
    monkeypatch.setattr(helpers, "cuda_device_present", lambda: False)
    with pytest.raises(pytest.skip.Exception):
        skip_unless_cuda_device("backend 'cupy' is not usable here (...)")


# ------------------------------------------- the trainer's side of capture_step
def tiny_config(tiny_dir, **kw):
    base = dict(dataset="custom", data_dir=str(tiny_dir), epochs=1, batch_size=64, val_size=200,
                seed=5, log_every=4)
    return TrainConfig(**{**base, **kw})


def _overwriting_capture(step, signature=lambda: ()):
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
    """The real backend on a CUDA device; a skip giving the reason where there is none."""
    return load_cuda_backend("device")


@pytest.fixture(scope="module", params=["on-cpu", pytest.param("device", marks=pytest.mark.gpu)])
def cuda_backend(request):
    """The cupy backend with its kernels run on the CPU (tests/host_cuda.py), and on the GPU.
    (Its kernels against the reference: test_kernels.py's random-shape tests.)"""
    return load_cuda_backend(request.param)


def _set_constant(monkeypatch, backend, name, value):
    """Set a module constant of the backend's own module: the emulated backend's module
    (tests/host_cuda.py) is a copy, not fastlenet.backends.cupy_backend."""
    namespace = type(backend).conv2d_forward.__globals__
    assert name in namespace, name
    monkeypatch.setitem(namespace, name, value)


def _agree_with_numpy(dev, run, names, rtol=1e-12, atol=1e-13):
    """``run(backend)`` -> a tuple of arrays (or None) on that backend, from host inputs
    it converts with ``backend.asarray``: the cupy backend's must equal the NumPy
    backend's, None where it is None, shape for shape."""
    from fastlenet.backends import get_backend

    want, got = run(get_backend("numpy")), run(dev)
    for name, g, r in zip(names, got, want, strict=True):
        if r is None:
            assert g is None, name
        else:
            assert dev.to_numpy(g).shape == r.shape, name
            np.testing.assert_allclose(dev.to_numpy(g), r, rtol=rtol, atol=atol, err_msg=name)


def _conv_backward(x, w, b, dy, stride, pad):
    """A run for _agree_with_numpy: the convolution's output and its three gradients."""
    def run(be):
        y, ctx = be.conv2d_forward(be.asarray(x), be.asarray(w),
                                   None if b is None else be.asarray(b), stride, pad)
        return (y, *be.conv2d_backward(be.asarray(dy), ctx))
    return run


@pytest.mark.parametrize("blocks", [1, 40, 200, 1024, 10 ** 6])
@pytest.mark.parametrize("shape", [
    # C, H, N, K, KH, stride, pad, bias
    (1, 12, 5, 3, 5, 1, 0, True),    # conv1-like: few weights, many slices
    (2, 9, 3, 4, 3, 2, 1, True),     # a stride, and bias blocks whose tap is in the padding
    (3, 7, 1, 2, 3, 1, 2, False),    # taps wholly in the padding for the edge rows; no bias
])
def test_weight_gradient_slices_sum_to_numpys(cuda_backend, monkeypatch, blocks, shape):
    """The conv weight gradient cuts the output rows into slices (about WEIGHT_BLOCKS
    blocks) and sums them in a second kernel: one slice, several with an uneven last one,
    and one row each must all give NumPy's dw and db."""
    C, H, N, K, KH, stride, pad, bias = shape
    _set_constant(monkeypatch, cuda_backend, "WEIGHT_BLOCKS", blocks)
    rng = np.random.default_rng(blocks + H)
    x = rng.standard_normal((C, H, H, N))
    w = rng.standard_normal((K, C, KH, KH))
    b = rng.standard_normal(K) if bias else None
    OH = (H + 2 * pad - KH) // stride + 1
    dy = rng.standard_normal((K, OH, OH, N))
    _agree_with_numpy(cuda_backend, _conv_backward(x, w, b, dy, stride, pad),
                      ("y", "dx", "dw", "db"), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("C, K", [(0, 3), (2, 0)])
def test_conv_without_input_or_output_channels_matches_numpy(cuda_backend, C, K):
    """No weights: nothing to slice or group; the bias gradient and dx as NumPy's."""
    rng = np.random.default_rng(C + K)
    x, w, b = rng.standard_normal((C, 6, 6, 3)), rng.standard_normal((K, C, 3, 3)), rng.standard_normal(K)
    dy = rng.standard_normal((K, 6, 6, 3))
    _agree_with_numpy(cuda_backend, _conv_backward(x, w, b, dy, 1, 1), ("y", "dx", "dw", "db"))


def test_conv_group_fits_the_kernels_register_array():
    cupy_backend = _cupy_module()
    text = (ROOT / "kernels" / "conv2d.cu").read_text(encoding="utf-8")
    assert 1 <= cupy_backend.CONV_GROUP <= int(re.search(r"#define CONV_GROUP (\d+)", text).group(1))


@pytest.mark.parametrize("group, threads", [(8, 0), (8, 10 ** 9), (4, 0), (3, 0), (8, 300)])
@pytest.mark.parametrize("shape", [
    # C, H, N, K, KH, stride, pad, bias
    (1, 12, 5, 6, 5, 1, 0, True),    # conv1-like: one group of six channels, or six of one
    (3, 9, 3, 11, 3, 2, 1, True),    # an uneven last group
    (2, 6, 2, 2, 3, 1, 2, False),    # fewer channels than a group; no bias
])
def test_conv_forward_channel_groups_match_numpy(cuda_backend, monkeypatch, group, threads,
                                                 shape):
    """The conv forward's threads compute groups of output channels (fewer, down to one,
    where that leaves too few threads): every grouping must give NumPy's output."""
    C, H, N, K, KH, stride, pad, bias = shape
    _set_constant(monkeypatch, cuda_backend, "CONV_GROUP", group)
    _set_constant(monkeypatch, cuda_backend, "CONV_THREADS", threads)
    rng = np.random.default_rng(K + H)
    x, w = rng.standard_normal((C, H, H, N)), rng.standard_normal((K, C, KH, KH))
    b = rng.standard_normal(K) if bias else None
    _agree_with_numpy(cuda_backend, lambda be: be.conv2d_forward(
        be.asarray(x), be.asarray(w), None if b is None else be.asarray(b), stride, pad)[:1],
        ("y",))


@pytest.mark.parametrize("threads, min_chunk", [(1, 16), (10 ** 6, 16), (10 ** 6, 1), (10 ** 6, 7)])
@pytest.mark.parametrize("IN, N, OUT", [(40, 9, 6), (5, 3, 2), (1, 4, 3)])
def test_matrix_product_splits_sum_to_numpys(cuda_backend, monkeypatch, threads, min_chunk,
                                             IN, N, OUT):
    """The linear layer's products split their inner dimension (of any length, uneven
    last chunk included) when they have few outputs: all three of the layer's products,
    with and without splits, must give NumPy's results."""
    _set_constant(monkeypatch, cuda_backend, "GEMM_THREADS", threads)
    _set_constant(monkeypatch, cuda_backend, "GEMM_MIN_CHUNK", min_chunk)
    rng = np.random.default_rng(IN + N)
    x, w, b = rng.standard_normal((IN, N)), rng.standard_normal((OUT, IN)), rng.standard_normal(OUT)
    dy = rng.standard_normal((OUT, N))

    def run(be):
        y, ctx = be.linear_forward(be.asarray(x), be.asarray(w), be.asarray(b))
        return (y, *be.linear_backward(be.asarray(dy), ctx))

    _agree_with_numpy(cuda_backend, run, ("y", "dx", "dw", "db"))


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_backend_draws_the_gpu_generators_numbers(cuda_backend, dtype):
    """The numba backend's Philox4x32-10 (numba/random.py) against kernels/random.cu for
    one seed: the same uniforms bit for bit, draw after draw (dropout's masks and the
    augmentations match across the two backends), normals to within the rounding of two
    libm's log and cos, and each backend's saved state restores in the other."""
    pytest.importorskip("numba")
    numba_be = backends.get_backend("numba")
    gpu, cpu = cuda_backend.default_rng(21), numba_be.default_rng(21)
    for shape in [(5000,), (3, 7), (1,)]:
        np.testing.assert_array_equal(cpu.random(shape, dtype=dtype),
                                      cuda_backend.to_numpy(gpu.random(shape, dtype=dtype)))
    tol = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(cpu.standard_normal(4099, dtype=dtype),
                               cuda_backend.to_numpy(gpu.standard_normal(4099, dtype=dtype)),
                               rtol=tol, atol=tol)
    assert numba_be.rng_state(cpu) == cuda_backend.rng_state(gpu)
    cuda_backend.set_rng_state(gpu, numba_be.rng_state(numba_be.default_rng(5)))
    np.testing.assert_array_equal(cuda_backend.to_numpy(gpu.random(9, dtype=dtype)),
                                  numba_be.default_rng(5).random(9, dtype=dtype))
    for counter in (2 ** 32 - 2, 2 ** 64 - 3):  # the counter's high word, and its wrap
        state = {"bit_generator": "Philox4x32-10", "key": 7, "counter": counter}
        numba_be.set_rng_state(cpu, state)
        cuda_backend.set_rng_state(gpu, state)
        np.testing.assert_array_equal(cpu.random(6, dtype=dtype),
                                      cuda_backend.to_numpy(gpu.random(6, dtype=dtype)))
        assert numba_be.rng_state(cpu) == cuda_backend.rng_state(gpu)


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


def _same_run(a, b, trainers=None):
    """Two run folders (and, given, their trainers) hold the same losses, bit for bit, and
    end with the same weights and optimizer state."""
    assert _history(a)["steps"] == _history(b)["steps"]
    if trainers:
        first, second = trainers
        for mine, theirs in ((first.model.state_dict(), second.model.state_dict()),
                             (first.optimizer.state_dict(), second.optimizer.state_dict())):
            for key, value in theirs.items():
                np.testing.assert_array_equal(mine[key], value, err_msg=key)


@pytest.mark.gpu
@pytest.mark.parametrize("model, augment", [("lenet5", False), ("compact", False),
                                            ("lenet5", True)])  # compact: dropout, BatchNorm
def test_captured_steps_equal_uncaptured_steps(cupy_backend, tiny_dir, tmp_path, monkeypatch,
                                              model, augment):
    """The whole step (gather, forward, loss, backward, Adam with one-cycle rates) replayed
    as one graph gives the bits of the same step run as plain calls. 1,000 images in
    batches of 64: two recordings (15 full batches, one of 40)."""
    config = tiny_config(tiny_dir, epochs=2, model=model, backend="cupy", augment=augment)
    from fastlenet.backends.cuda_graph import CapturedStep

    captured = Trainer(config, out=tmp_path / "captured", log=None)
    recorder = captured._step._run
    assert isinstance(recorder, CapturedStep)
    captured.run()
    assert len(recorder.graphs) == 2 and not recorder.uncapturable
    monkeypatch.setattr(cupy_backend, "capture_step", lambda step, signature=None: step)
    plain = Trainer(config, out=tmp_path / "plain", log=None)
    plain.run()
    _same_run(tmp_path / "captured", tmp_path / "plain", (captured, plain))


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["lenet5", "compact"])
def test_resume_on_the_gpu_equals_an_uninterrupted_run(cupy_backend, tiny_dir, tmp_path, model):
    config = tiny_config(tiny_dir, epochs=3, model=model, backend="cupy")
    train(config, out=tmp_path / "straight", log=None)
    train(config, out=tmp_path / "interrupted", log=None,
          on_epoch_end=lambda record: record["epoch"] == 1)
    train(resume=tmp_path / "interrupted", log=None)
    _same_run(tmp_path / "straight", tmp_path / "interrupted")


@pytest.mark.gpu
def test_two_runs_with_one_seed_are_equal_on_the_gpu(cupy_backend, tiny_dir, tmp_path):
    config = tiny_config(tiny_dir, epochs=2, model="compact", backend="cupy", augment=True)
    first = Trainer(config, out=tmp_path / "first", log=None)
    first.run()
    second = Trainer(config, out=tmp_path / "second", log=None)
    second.run()
    _same_run(tmp_path / "first", tmp_path / "second", (first, second))


@pytest.mark.gpu
def test_a_recording_keeps_its_blocks_when_the_pool_is_emptied(cupy_backend, tiny_dir, tmp_path,
                                                               monkeypatch):
    """After recording, drop every Python reference to the step's arrays (evaluation
    replaces the layers' caches), empty the private pool's free blocks and fill the
    device with other arrays: replays must still equal plain steps."""
    import cupy

    config = tiny_config(tiny_dir, epochs=1, model="compact", backend="cupy", train_limit=640)
    runs = {}
    for name in ("captured", "plain"):
        if name == "plain":
            monkeypatch.setattr(cupy_backend, "capture_step", lambda step, signature=None: step)
        trainer = Trainer(config, out=tmp_path / name, log=None)
        perm = cupy_backend.asarray(np.random.default_rng(0).permutation(trainer.n_train))
        losses, clutter = [], []
        for k in range(8):
            if k == 4:
                evaluate(trainer.model, trainer.data.x_val, trainer.data.y_val)
                trainer.model.train()
                recorder = trainer._step._run
                if name == "captured":
                    assert recorder.graphs
                    recorder.pool.free_all_blocks()
                    cupy.get_default_memory_pool().free_all_blocks()
                    clutter = [cupy.full(1 << 20, np.nan, dtype=np.float32) for _ in range(16)]
            losses.append(float(trainer._step(perm[64 * k:64 * (k + 1)]).copy()))
        runs[name] = losses, trainer.model.state_dict()
        del clutter
    assert runs["captured"][0] == runs["plain"][0]
    for key, value in runs["plain"][1].items():
        np.testing.assert_array_equal(runs["captured"][1][key], value, err_msg=key)


@pytest.mark.gpu
def test_restoring_the_generator_reaches_a_recorded_draw_on_the_gpu(cupy_backend):
    rng = cupy_backend.default_rng(11)
    captured = cupy_backend.capture_step(lambda x: (rng.random(x.shape, dtype=np.float32),))
    x = cupy_backend.xp.zeros(1000, dtype=np.float32)
    for _ in range(3):  # warm-up, recording, replay
        captured(x)
    saved = cupy_backend.rng_state(rng)
    want = cupy_backend.to_numpy(captured(x)[0])
    cupy_backend.set_rng_state(rng, saved)
    np.testing.assert_array_equal(cupy_backend.to_numpy(captured(x)[0]), want)
    other = cupy_backend.default_rng(12)
    cupy_backend.set_rng_state(rng, cupy_backend.rng_state(other))
    np.testing.assert_array_equal(cupy_backend.to_numpy(captured(x)[0]),
                                  cupy_backend.to_numpy(other.random(1000, dtype=np.float32)))


@pytest.mark.gpu
@pytest.mark.slow
def test_full_mnist_on_the_gpu_reaches_99_percent(cupy_backend, tmp_path):
    metrics = train(TrainConfig(backend="cupy"), out=tmp_path / "run", log=None)
    assert metrics["test_accuracy"] >= 0.99
