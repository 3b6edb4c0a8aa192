"""The local sweep runner: each setting trains in its own ``python -m fastlenet train``
process on this machine, ``jobs`` at a time, its output in ``train.log`` in its run folder.

With ``jobs > 1`` each process gets one BLAS and one Numba thread. On Linux a training
process is killed with the sweep (PR_SET_PDEATHSIG), so a killed sweep leaves none
training on unseen; a setting whose folder holds a checkpoint resumes from it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .sweep_setting import Setting, one_thread_environment, run_result, train_arguments


def run_local(todo: list[Setting], jobs: int, events) -> None:
    """Train every setting of ``todo``, ``jobs`` at a time; report each start and end to
    ``events`` (``started(index, where)``, ``finished(index, row_fields)``). On any
    exception (Ctrl-C included) the running processes are stopped first."""
    env = child_environment(jobs)
    waiting = list(todo)
    running: list[tuple[Setting, subprocess.Popen, float]] = []
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                setting = waiting.pop(0)
                running.append((setting, _start(setting, env), time.perf_counter()))
                events.started(setting.index, "this machine")
            time.sleep(0.1)
            for entry in [entry for entry in running if entry[1].poll() is not None]:
                running.remove(entry)
                setting, process, started = entry
                events.finished(setting.index, run_result(setting.run_dir, process.returncode,
                                                          time.perf_counter() - started))
    finally:
        for _, process, _ in running:
            process.terminate()
            process.wait()


def child_environment(jobs: int) -> dict:
    """The environment of each training process: this fastlenet first on the path and,
    when several run at once, one thread each (set before the child imports numpy)."""
    env = one_thread_environment() if jobs > 1 else dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def _start(setting: Setting, env: dict) -> subprocess.Popen:
    run_dir = setting.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if setting.resumes:  # the run's own config is in its checkpoint
        command, mode = ["--resume", str(run_dir)], "a"
    else:
        command, mode = [*train_arguments(setting.values), "--out", str(run_dir)], "w"
    with open(run_dir / "train.log", mode) as logfile:
        return subprocess.Popen([sys.executable, "-m", "fastlenet", "train", *command, "--no-progress"],
                                stdout=logfile, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent())


def _die_with_parent():
    """What a child runs before the training command on Linux: ask for SIGTERM when this
    process dies. prctl is looked up here, before the fork, so the child only calls it."""
    if sys.platform != "linux":
        return None
    import ctypes

    prctl, parent = ctypes.CDLL(None, use_errno=True).prctl, os.getpid()
    PR_SET_PDEATHSIG = 1

    def in_child():
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the sweep died before the line above took effect
            os._exit(1)

    return in_child
