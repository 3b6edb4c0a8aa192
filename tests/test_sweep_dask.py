"""``fastlenet sweep --cluster`` on real Dask processes: the table of a local sweep, a
worker killed mid-setting, a sweep resumed after its client was killed, and the one-line
errors of a cluster that cannot be used."""

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed", reason="needs the dask extra: pip install -e '.[dask]'")

from fastlenet.checkpoint import load_checkpoint  # noqa: E402
from fastlenet.cli import main  # noqa: E402
from fastlenet.sweep_setting import THREAD_VARIABLES, train_config  # noqa: E402
from fastlenet.train import train  # noqa: E402

from helpers import assert_one_line_error, run_cli  # noqa: E402

GRID = ["--seed", "1,2", "--lr", "3e-3,5e-3"]
# what a row must equal between sweeps of the same grid: all but the times
SAME = ("seed", "lr", "status", "test_accuracy", "best_val_accuracy", "best_epoch", "epochs", "run")


def tiny(tiny_dir, epochs=2, batch_size=25):
    """Options for settings of about a second: 1,150 training images on numpy."""
    return ["--data-dir", str(tiny_dir), "--val-size", "50", "--epochs", str(epochs),
            "--backend", "numpy", "--batch-size", str(batch_size)]


def table(out):
    with open(out / "sweep.csv", newline="") as f:
        return [{key: row[key] for key in SAME if key in row} for row in csv.DictReader(f)]


def start_sweep(out, *args):
    """``fastlenet sweep`` in a process of its own, its output in ``out``.log."""
    log = open(f"{out}.log", "w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "fastlenet", "sweep", *map(str, args),
                             "--out", str(out)], stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_for(condition, process, timeout=120):
    """Poll ``condition`` until true; fail if ``process`` ends or time runs out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the sweep ended before the moment the test waits for"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def epochs_written(run_dir):
    try:
        return load_checkpoint(run_dir / "last.npz").meta["epoch"]
    except Exception:  # not there yet
        return 0


@pytest.fixture(scope="module")
def local_table(tiny_dir, tmp_path_factory):
    """The grid swept on this machine, two processes at a time, one thread each."""
    out = tmp_path_factory.mktemp("local") / "sweep"
    assert main(["sweep", *tiny(tiny_dir), *GRID, "--jobs", "2", "--out", str(out)]) == 0
    return table(out)


def test_a_local_cluster_gives_the_table_of_a_local_sweep(local_table, tiny_dir, tmp_path):
    out = tmp_path / "sweep"
    result = run_cli("sweep", *tiny(tiny_dir), *GRID, "--cluster", "local:2", "--out", out)
    assert result.returncode == 0, result.stderr
    assert table(out) == local_table  # to the bit: same seeds, one thread each
    assert all(row["status"] == "ok" for row in local_table)
    lines = result.stdout.splitlines()
    assert "LocalCluster of 2 worker processes" in lines[0] and "[4/4 done, 0 running, 0 pending]" in result.stdout
    assert any(re.search(r"\[0/4 done, 1 running, 3 pending\] .*: started on tcp://", line) for line in lines)
    for row in local_table:  # the workers' files came back: no shared folder is needed
        files = {p.name for p in (out / row["run"]).iterdir()}
        assert {"config.json", "history.json", "metrics.json", "last.npz", "best.npz", "train.log"} <= files
    assert not list(out.rglob(".*.tmp"))


def test_a_worker_killed_mid_setting_costs_at_most_an_epoch(tiny_dir, tmp_path):
    epochs = 8  # about 2 s of training left after the first checkpoint: the kill comes first
    out = tmp_path / "sweep"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", env={v: "1" for v in THREAD_VARIABLES}) as cluster, \
            distributed.Client(cluster) as client:
        sweep = start_sweep(out, *tiny(tiny_dir, epochs), "--seed", "1,2", "--cluster",
                            cluster.scheduler_address)
        output = Path(f"{out}.log")
        started = re.compile(r"seed-1: started on (\S+)")
        wait_for(lambda: started.search(output.read_text()) and epochs_written(out / "seed-1") >= 1, sweep)
        pids = client.run(os.getpid)
        os.kill(pids[started.search(output.read_text()).group(1)], signal.SIGKILL)
        reached = epochs_written(out / "seed-1")  # what the client held when the worker died
        assert sweep.wait(timeout=120) == 0, output.read_text()
    text = output.read_text()
    assert reached < epochs, "the setting ended before its worker was killed"
    assert [row["status"] for row in table(out)] == ["ok", "ok"]
    assert len(re.findall(r"seed-1: restarted on", text)) == 1, text
    assert len(re.findall(r"seed-1: test ", text)) == 1  # it ended once
    resumed = re.findall(r"resuming \S+ after epoch (\d+)", (out / "seed-1" / "train.log").read_text())
    assert len(resumed) == 1 and int(resumed[0]) >= reached  # lost at most the epoch under way
    # the same weights as a run never interrupted, trained on one thread as the workers do
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        train(train_config(dict(data_dir=str(tiny_dir), val_size=50, epochs=epochs, backend="numpy",
                                batch_size=25, seed=1)), out=tmp_path / "reference", progress=False, log=None)
    expected, got = (load_checkpoint(p / "last.npz") for p in (tmp_path / "reference", out / "seed-1"))
    assert expected.params.keys() == got.params.keys()
    for name in expected.params:
        np.testing.assert_array_equal(got.params[name], expected.params[name], err_msg=name)
    accuracies = [[e["test_accuracy"] for e in c.meta["history"]["epochs"]] for c in (got, expected)]
    assert accuracies[0] == accuracies[1] and len(accuracies[0]) == epochs


def _children(pid):
    """Processes whose parent is ``pid`` (Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="finds the worker processes in /proc")
def test_a_sweep_resumed_after_its_client_was_killed_ends_as_if_never_stopped(tiny_dir, tmp_path):
    # four epochs a setting, so a setting stays partial for three of them: with two, the
    # moment the kill waits for lasted one epoch and a loaded machine could miss it
    options = [*tiny(tiny_dir, epochs=4), *GRID]
    assert main(["sweep", *options, "--jobs", "2", "--out", str(tmp_path / "local")]) == 0
    local_table = table(tmp_path / "local")
    out = tmp_path / "sweep"
    sweep = start_sweep(out, *options, "--cluster", "local:2")

    workers = []

    def one_ended_one_partial():
        rows = table(out) if (out / "sweep.csv").exists() else []
        ended = [r for r in rows if r["status"] == "ok"]
        partial = [r for r in rows if r["status"] != "ok" and epochs_written(out / r["run"]) >= 1]
        workers[:] = _children(sweep.pid)  # found before the kill, which then comes at once
        return ended and partial

    wait_for(one_ended_one_partial, sweep)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    # a partial setting may still have ended between the check and the kill
    partial = any(epochs_written(out / r["run"]) >= 1 and not (out / r["run"] / "metrics.json").exists()
                  for r in table(out))
    deadline = time.monotonic() + 30  # no worker trains on once its client is gone
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert workers and not any(map(_alive, workers))

    result = run_cli("sweep", "--resume", out, "--cluster", "local:2")
    assert result.returncode == 0, result.stderr
    assert "kept from before" in result.stdout, result.stdout
    assert not partial or "from the checkpoint of epoch" in result.stdout, result.stdout
    assert table(out) == local_table


def test_a_cluster_that_cannot_be_used_is_one_line(tiny_dir, tmp_path):
    sweep = ["sweep", *tiny(tiny_dir, 1), "--seed", "1,2", "--cluster-timeout", "2"]
    assert_one_line_error(run_cli(*sweep, "--cluster", "localhost:8786", "--out", tmp_path / "a"),
                          "--cluster takes a Dask scheduler's address, tcp://HOST:PORT")
    assert_one_line_error(run_cli(*sweep, "--cluster", "local:2", "--jobs", "2", "--out", tmp_path / "a"),
                          "--jobs is for sweeps on this machine")
    began = time.monotonic()
    assert_one_line_error(run_cli(*sweep, "--cluster", "tcp://127.0.0.1:9", "--out", tmp_path / "a"),
                          "cannot reach a Dask scheduler at tcp://127.0.0.1:9 within 2 s")
    assert time.monotonic() - began < 2 + 15  # the timeout, plus starting Python
    with distributed.LocalCluster(n_workers=0, dashboard_address=":0") as empty:
        began = time.monotonic()
        assert_one_line_error(run_cli(*sweep, "--cluster", empty.scheduler_address, "--out", tmp_path / "a"),
                              "has no workers after 2 s; start some with 'dask worker tcp://")
        assert time.monotonic() - began < 2 + 15
    assert not (tmp_path / "a").exists()
