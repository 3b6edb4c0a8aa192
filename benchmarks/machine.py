"""What a benchmark ran on: CPU, cores, BLAS, library versions; and the load and date.

Stored in the results JSON (``machine_info["fastlenet"]`` beside pytest-benchmark's own
machine description, and ``"conditions"``) and printed by the render script, so a figure
is never separated from the machine and the libraries that produced it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from datetime import datetime, timezone

# distributions whose versions change the figures (absent ones are left out)
LIBRARIES = ("fastlenet", "numpy", "numba", "llvmlite", "cupy-cuda12x", "cupy-cuda13x",
             "torch", "threadpoolctl", "pytest-benchmark")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


# vector instruction sets worth naming with a figure (PyTorch's oneDNN and LLVM use the
# widest the CPU has, so speed ratios differ between AVX2 and AVX-512 machines)
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16")


def cpu_details() -> dict:
    """CPU family and model numbers, the vector instruction sets of VECTOR_FLAGS the CPU
    has, and LLVM's name for it (the target Numba compiles for), where known."""
    details: dict = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key in ("cpu family", "model") and key not in details:
                    details[key] = value
                elif key == "flags":
                    have = set(value.split())
                    details["vector_features"] = [flag for flag in VECTOR_FLAGS if flag in have]
                    break
    except OSError:
        pass
    try:
        import llvmlite.binding as llvm
        details["llvm_cpu"] = llvm.get_host_cpu_name()
    except Exception:  # llvmlite absent or too old: no name
        pass
    return details


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def blas() -> list[dict]:
    """The BLAS libraries loaded in this process, with their thread counts (threadpoolctl),
    or NumPy's build record of its BLAS when threadpoolctl is missing."""
    import numpy as np

    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        info = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return [{"name": info.get("name"), "version": info.get("version"),
                 "num_threads": None, "source": "numpy build configuration"}]
    return [{"name": lib["internal_api"], "version": lib.get("version"),
             "architecture": lib.get("architecture"), "threading_layer": lib.get("threading_layer"),
             "num_threads": lib["num_threads"], "library": os.path.basename(lib["filepath"])}
            for lib in threadpool_info() if lib["user_api"] == "blas"]


def gpus() -> list[str]:
    """The NVIDIA GPUs nvidia-smi lists (name, driver, memory), or none."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []


# environment variables that choose which kernels run: OPENBLAS_CORETYPE=Haswell (set on
# the development machines) keeps OpenBLAS to its AVX2 kernels on an AVX-512 CPU
KERNEL_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_VERBOSE", "NUMBA_CPU_NAME",
                    "NUMBA_CPU_FEATURES", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA",
                    "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "NPY_DISABLE_CPU_FEATURES")


def describe() -> dict:
    """The machine and software, as a JSON-ready dict; the same for every run of one
    setup (pytest-benchmark warns when a compared run's machine description differs)."""
    return {
        "cpu": cpu_model(),
        "cpu_details": cpu_details(),
        "cores": usable_cores(),
        "gpus": gpus(),
        "os": platform.platform(),
        "blas": blas(),
        "versions": versions(),
        "thread_variables": {k: v for k, v in sorted(os.environ.items())
                             if k.endswith("_NUM_THREADS") or k == "NUMBA_THREADING_LAYER"},
        "kernel_variables": {k: v for k, v in sorted(os.environ.items())
                             if k in KERNEL_VARIABLES},
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: other work on the machine skews the figures."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def conditions(load_at_start: list[float] | None) -> dict:
    """What changes from run to run: the date, the load before and after, and the threads
    of the libraries this run imported (PyTorch's, Numba's and its threading layer)."""
    info = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "load_average_at_start": load_at_start, "load_average_at_end": load_average()}
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    if "numba" in sys.modules:
        numba = sys.modules["numba"]
        info["numba_threads"] = numba.get_num_threads()
        try:
            info["numba_threading_layer"] = numba.threading_layer()
        except ValueError:  # no parallel region has run
            pass
        # the per-machine kernel choices this run used (fastlenet.tuning)
        from fastlenet import tuning
        info["tuning"] = tuning.recorded().get(tuning.machine_key(numba.get_num_threads()), {})
        info["tuning_mode"] = tuning.mode()
    tiles = sys.modules.get("fastlenet.backends.numba.tiles")
    if tiles is not None:  # the numba convolutions' vector width, derived from the CPU
        info["numba_tile_bytes"] = tiles.VECTOR_BYTES
    return info
