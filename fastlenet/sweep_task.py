"""The task a Dask worker runs for one sweep setting: train it in this process, on one
BLAS and one Numba thread, in a scratch run folder whose files go back to the client.

After every epoch the folder's files (config, history, checkpoints, log) are stored on the
scheduler in the setting's ``distributed.Variable`` and the client is told through the
sweep's ``distributed.Queue``; the client writes them to its sweep folder, so no shared
file system is needed. A task that starts (or is started again by Dask after its worker
died) first reads that Variable, so it resumes from the last checkpoint stored there.
Training runs in the worker's own process, so it dies with the worker.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager, nullcontext
from pathlib import Path

from distributed import Event, Queue, Variable, get_worker

from .errors import ConfigError, FastLeNetError
from .sweep_setting import run_files, train_config
from .train import train
from .version import __version__


def train_setting(index: int, values: dict, names: dict, version: str) -> dict:
    """Train setting ``index`` (TrainConfig fields ``values``) and return its run folder
    as ``{"returncode", "wall_seconds", "files": {name: bytes}}``. ``names`` are the
    sweep's Variable of this setting (``store``), Queue (``queue``) and Event (``stop``)."""
    worker = get_worker()
    store, queue, stop = Variable(names["store"]), Queue(names["queue"]), Event(names["stop"])
    snapshot = store.get()
    queue.put({"event": "started", "index": index, "worker": worker.address,
               "epoch": snapshot["epoch"]})
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="fastlenet-sweep-", dir=worker.local_directory))
    try:
        for name, data in snapshot["files"].items():
            (folder / name).write_bytes(data)

        def ship(record: dict) -> bool:
            """After each epoch: store the folder on the scheduler, tell the client, and
            stop when the client has given up the sweep."""
            try:
                store.set({"epoch": record["epoch"], "files": run_files(folder)})
                queue.put({"event": "epoch", "index": index, "epoch": record["epoch"]})
                return stop.is_set()
            except Exception as exc:  # lost the scheduler: Dask retries the task
                raise _LostContact(f"{type(exc).__name__}: {exc}") from None

        returncode = _train(folder, values, version, ship)
        return {"returncode": returncode, "wall_seconds": time.perf_counter() - started,
                "files": run_files(folder)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _LostContact(Exception):
    """Storing a checkpoint on the scheduler failed (the message says why): not the
    setting's failure but the cluster's, so the task raises it and Dask retries."""


def _train(folder: Path, values: dict, version: str, on_epoch_end) -> int:
    """Train into ``folder`` (resuming its last.npz if it has one), the output appended to
    its train.log as ``fastlenet train`` writes it; return the command's exit status."""
    with open(folder / "train.log", "a", buffering=1) as logfile:
        def log(message: str) -> None:
            print(message, file=logfile)

        try:
            if version != __version__:
                raise ConfigError(f"this Dask worker runs fastlenet {__version__} and the sweep "
                                  f"fastlenet {version}; install the same fastlenet on every worker")
            with one_thread(), heap_for_arrays():
                if (folder / "last.npz").is_file():
                    train(resume=folder, out=folder, progress=False, log=log,
                          on_epoch_end=on_epoch_end)
                else:
                    train(train_config(values), out=folder, progress=False, log=log,
                          on_epoch_end=on_epoch_end)
        except _LostContact:
            raise
        except FastLeNetError as exc:
            log(f"fastlenet: error: {exc}")
            return 2
        except Exception:  # a crash of this setting is its row, as a crashed process's is
            log(traceback.format_exc().rstrip())
            return 1
    return 0


@contextmanager
def one_thread():
    """One BLAS thread (threadpoolctl, when installed; Dask's nanny also starts workers
    with OPENBLAS_NUM_THREADS=1) and, where Numba is installed, one Numba thread in this
    task's thread, whichever backend the setting names (no backend is singled out)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        limits = nullcontext()
    else:
        limits = threadpool_limits(1)
    with limits:
        if importlib.util.find_spec("numba") is not None:
            import numba

            numba.set_num_threads(1)
        yield


# glibc's mallopt parameters, and the mmap threshold it starts with
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _MMAP_THRESHOLD_DEFAULT = -1, -3, 128 * 1024


@contextmanager
def heap_for_arrays():
    """Keep training's large temporary arrays on the heap while it runs.

    Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_ set, which stops glibc from
    raising its mmap threshold: every array over 128 KB is then mapped and unmapped
    afresh (page faults each step; docs/sweeps.md has the cost). Where that variable is
    set, the thresholds glibc would reach by itself are set instead, and the nanny's
    restored afterwards.
    """
    trim = os.environ.get("MALLOC_TRIM_THRESHOLD_", "")
    try:
        libc = ctypes.CDLL("libc.so.6") if trim.isdigit() and sys.platform == "linux" else None
    except OSError:  # not glibc
        libc = None
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's largest
    libc.mallopt(_M_TRIM_THRESHOLD, 64 * 2**20)  # twice it, as glibc's own rule has it
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_DEFAULT)
        libc.mallopt(_M_TRIM_THRESHOLD, int(trim))
        libc.malloc_trim(0)

