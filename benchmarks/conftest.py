"""Options, parametrization and machine description of the benchmark suite.

Every benchmark with a ``contender`` argument runs once per contender: each fastlenet
backend usable here (``fastlenet.backends.usable()``, so a new backend joins by its
registry entry), ``torch`` (PyTorch CPU), ``torch-cuda`` (PyTorch eager on a CUDA
device) and ``torch-cuda-graphs`` (each PyTorch training step one CUDA graph replay); a
PyTorch contender's cases skip, saying why, where PyTorch or a CUDA device is missing.
``batch`` runs over
``--batch-sizes``. Benchmarks marked ``long`` (full epochs, training to 99%, the
memory and startup processes) are deselected with ``-m "not long"``.
"""

from __future__ import annotations

import importlib.util

import pytest

from fastlenet import backends

from . import lenet, machine, torch_contenders
from .torch_contenders import TORCH_CONTENDERS, torch_unavailable

BATCH_SIZES = "64,128,256,1024"
_LOAD_AT_START = pytest.StashKey[list]()


def pytest_addoption(parser):
    group = parser.getgroup("fastlenet benchmarks")
    group.addoption("--contenders", default=None, metavar="NAMES",
                    help="comma-separated fastlenet backends and/or 'torch' to benchmark "
                         "(default: every usable backend, and torch)")
    group.addoption("--batch-sizes", default=BATCH_SIZES, metavar="SIZES",
                    help=f"comma-separated batch sizes of the per-op benchmarks (default {BATCH_SIZES})")
    group.addoption("--epoch-images", type=int, default=60000, metavar="N",
                    help="training images in one benchmarked epoch (default 60000, all of MNIST's)")
    group.addoption("--epoch-rounds", type=int, default=3, metavar="R",
                    help="timed epochs per contender, each after an untimed PyTorch epoch (default 3)")
    group.addoption("--step-rounds", type=int, default=100, metavar="R",
                    help="timed training steps per contender (default 100)")
    group.addoption("--torch-threads", type=int, default=None, metavar="T",
                    help="torch.set_num_threads (default: one per usable core)")
    group.addoption("--accuracy-seed", type=int, default=0, metavar="S",
                    help="seed of the time-to-accuracy training runs (default 0)")


def pytest_configure(config):
    config.stash[_LOAD_AT_START] = machine.load_average()
    minimum = {"--epoch-images": lenet.BATCH, "--epoch-rounds": 1, "--step-rounds": 1,
               "--torch-threads": 1, "--accuracy-seed": 0}
    for option, least in minimum.items():
        value = config.getoption(option)
        if value is not None and value < least:
            raise pytest.UsageError(f"{option} must be at least {least}, got {value}")
    torch_contenders.torch_threads = config.getoption("--torch-threads")
    config.addinivalue_line("markers", "long: a benchmark of a minute or more (full epochs, "
                                       "training to 99%, memory and startup processes); "
                                       "deselect with -m 'not long'")
    if importlib.util.find_spec("pytest_benchmark") is None:
        raise pytest.UsageError("the benchmarks need pytest-benchmark; install it with "
                                "python -m pip install -e '.[bench]'")


def _contenders(config) -> list[str]:
    requested = config.getoption("--contenders")
    if requested is None:
        return backends.usable() + list(TORCH_CONTENDERS)
    names = [name.strip() for name in requested.split(",") if name.strip()]
    status = backends.status()
    for name in names:
        if name in TORCH_CONTENDERS:
            why = torch_unavailable(name)
            if why is not None:
                raise pytest.UsageError(f"--contenders: {why}; or leave {name} out")
        elif name not in status:
            raise pytest.UsageError(f"--contenders: unknown contender '{name}'; choose from: "
                                    f"{', '.join([*status, *TORCH_CONTENDERS])}")
        elif status[name] is not None:
            raise pytest.UsageError(f"--contenders: {status[name]}")
    return names


def _batch_sizes(config) -> list[int]:
    text = config.getoption("--batch-sizes")
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise pytest.UsageError(f"--batch-sizes takes positive integers separated by commas, "
                                f"got '{text}'")
    return sizes


def pytest_generate_tests(metafunc):
    if "contender" in metafunc.fixturenames:
        metafunc.parametrize("contender", _contenders(metafunc.config))
    if "batch" in metafunc.fixturenames:
        metafunc.parametrize("batch", _batch_sizes(metafunc.config))


@pytest.fixture(autouse=True)
def _skip_torch_when_absent(request):
    callspec = getattr(request.node, "callspec", None)
    contender = callspec.params.get("contender") if callspec else None
    if contender in TORCH_CONTENDERS:
        why = torch_unavailable(contender)
        if why is not None:
            pytest.skip(why)


@pytest.fixture(scope="session")
def contenders(pytestconfig) -> list[str]:
    """Every contender of this session that can run (a benchmark pairs its rounds with
    PyTorch's when PyTorch is among them)."""
    return _runnable(pytestconfig)


def _runnable(config) -> list[str]:
    return [c for c in _contenders(config)
            if c not in TORCH_CONTENDERS or torch_unavailable(c) is None]


@pytest.fixture(scope="session")
def training_set(pytestconfig):
    """The first --epoch-images MNIST training images and labels, preprocessed."""
    return lenet.load_training_set(pytestconfig.getoption("--epoch-images"))


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["fastlenet"] = machine.describe()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["conditions"] = {**machine.conditions(config.stash[_LOAD_AT_START]),
                                 "contenders": _runnable(config)}
    # Every round's raw time makes a full run's file huge; the statistics (min, median,
    # quartiles, rounds...) stay, and they are all that render and compare read.
    for bench in output_json["benchmarks"]:
        bench["stats"].pop("data", None)
