"""Trainings killed at random moments (SIGKILL or SIGINT, 1 to 3 times) and continued as a
user would, with ``--resume`` (or the first command again when nothing was written yet),
end with the weights, optimizer state and loss history of an uninterrupted run, to the bit.

The kill moments come from a fixed seed, so a failure replays. 3 runs in the default suite
(numba's each start costs seconds of loading its kernels: one kill of LeNet-5 there);
``-m slow`` runs 10 per backend of the model with every random generator. A run killed mid-write leaves a temporary, which its resume removes.
"""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fastlenet import backends
from fastlenet.checkpoint import load_checkpoint


# compact (dropout, BatchNorm) with augmentation: every random generator a resume restores
FULL = ("--model", "compact", "--augment")


def command(tiny_dir, out, backend, model=FULL):
    return [sys.executable, "-m", "fastlenet", "train", "--data-dir", str(tiny_dir), "--limit", "256",
            "--val-size", "32", "--batch-size", "32", "--epochs", "3", "--seed", "7",
            "--backend", backend, *model, "--out", str(out), "--no-progress"]


# one BLAS thread: the children share two cores with the test runner, and spinning BLAS
# threads would make them many times slower (the bits do not depend on it: every run has it)
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run(argv, kill_after=None, sig=None):
    """Run ``argv``; with ``kill_after``, send ``sig`` that many seconds in. Its exit status."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    if kill_after is not None:
        try:
            process.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            process.send_signal(sig)
    _, stderr = process.communicate(timeout=600)
    if kill_after is None:
        assert process.returncode == 0, stderr.decode()
    return process.returncode


def timed_run(argv, out):
    """Run ``argv`` to its end; return (seconds until training began, as config.json shows,
    seconds in all)."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    tick, began = time.perf_counter(), None
    while process.poll() is None:
        if began is None and (out / "config.json").exists():
            began = time.perf_counter() - tick
        time.sleep(0.01)
    assert process.returncode == 0, process.stderr.read().decode()
    return began, time.perf_counter() - tick


def chaos_run(tiny_dir, out, backend, model, rng, timing, most_kills):
    """Kill a training 1 to ``most_kills`` times at random moments, continue it after each;
    return what was done, for the failure message."""
    argv = command(tiny_dir, out, backend, model)
    done = []
    for _ in range(rng.randint(1, most_kills)):
        # a fifth of the kills while it starts, the others while it trains
        began, duration = timing
        moment = rng.uniform(0, began) if rng.random() < 0.2 else rng.uniform(began, 0.95 * duration)
        sig = rng.choice([signal.SIGKILL, signal.SIGINT])
        status = run(argv, moment, sig)
        saved = (f"last.npz at epoch {load_checkpoint(out).meta['epoch']}" if (out / "last.npz").exists()
                 else "config.json only" if (out / "config.json").exists() else "nothing")
        done.append(f"{sig.name} at {moment:.2f} s -> exit {status}, {saved}")
        # the user continues the run; a run that wrote no config yet is started again
        argv = (command(tiny_dir, out, backend, model) if not (out / "config.json").exists()
                else [*argv[:4], "--resume", str(out), "--no-progress"])
    run(argv)
    return done


def assert_same_run(reference, out, story):
    want, got = load_checkpoint(reference), load_checkpoint(out)
    assert got.meta["epoch"] == want.meta["epoch"] == 3, story
    for part in ("params", "optim"):
        mine, theirs = getattr(got, part), getattr(want, part)
        assert mine.keys() == theirs.keys(), story
        for key in theirs:
            assert np.array_equal(mine[key], theirs[key]), f"{part} {key} differs after {story}"
    assert got.meta["history"]["steps"] == want.meta["history"]["steps"], story
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir()), story


def chaos(tiny_dir, tmp_path, backend, n, seed, most_kills=3, model=FULL):
    if backends.status()[backend] is not None:
        pytest.skip(backends.status()[backend])
    reference = tmp_path / "straight"
    timing = timed_run(command(tiny_dir, reference, backend, model), reference)
    rng = random.Random(seed)
    for k in range(n):
        out = tmp_path / f"chaos{k}"
        story = chaos_run(tiny_dir, out, backend, model, rng, timing, most_kills)
        assert_same_run(reference, out, f"run {k}: " + ", ".join(story))


@pytest.mark.parametrize("backend, n, most_kills, model", [
    ("numpy", 2, 3, FULL),
    ("numba", 1, 1, ()),  # LeNet-5: fewer kernels to load at each start
])
def test_killed_and_resumed_runs_end_as_an_uninterrupted_one(tiny_dir, tmp_path, backend, n,
                                                              most_kills, model):
    chaos(tiny_dir, tmp_path, backend, n, seed=2112, most_kills=most_kills, model=model)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_ten_killed_and_resumed_runs_per_backend_end_as_uninterrupted_ones(tiny_dir, tmp_path, backend):
    chaos(tiny_dir, tmp_path, backend, 10, seed=1984)
