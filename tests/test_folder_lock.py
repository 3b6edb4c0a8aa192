"""One writer per run or sweep folder: concurrent writers are refused, a killed one is not."""

import os
import signal
import subprocess
import sys
import time

import pytest

from fastlenet.folder_lock import LOCK_NAME, lock_folder

from helpers import assert_one_line_error, run_cli


def train_command(tiny_dir, out, *extra):
    return [sys.executable, "-m", "fastlenet", "train", "--data-dir", str(tiny_dir), "--limit",
            "64", "--val-size", "0", "--batch-size", "32", "--epochs", "1", "--backend", "numpy",
            "--out", str(out), "--no-progress", *map(str, extra)]


def race(tiny_dir, out):
    """Start two trainings of one folder at once; return their finished processes."""
    processes = [subprocess.Popen(train_command(tiny_dir, out), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=300), *p.communicate())
            for p in processes]


def check_races(tiny_dir, tmp_path, n):
    by_lock = 0
    for k in range(n):
        results = race(tiny_dir, tmp_path / f"run{k}")
        codes = sorted(r.returncode for r in results)
        assert codes == [0, 2], [r.stderr for r in results]
        loser = next(r for r in results if r.returncode == 2)
        # refused by the lock while the winner trains, or, had it already ended, as a done run
        assert_one_line_error(loser)
        assert "in use by another fastlenet (process " in loser.stderr or \
            "already holds a run" in loser.stderr, loser.stderr
        by_lock += "in use by another fastlenet" in loser.stderr
        assert not (tmp_path / f"run{k}" / LOCK_NAME).exists()  # the winner removed it
    assert by_lock >= 1  # the lock itself refused a writer, not only the finished-run check


def test_two_trainings_of_one_folder_never_both_proceed(tiny_dir, tmp_path):
    check_races(tiny_dir, tmp_path, 3)


@pytest.mark.slow
def test_twenty_races_of_two_trainings_let_one_through_each_time(tiny_dir, tmp_path):
    check_races(tiny_dir, tmp_path, 20)


def wait_for(path, process, seconds=120):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_running_training_refuses_a_resume_and_a_killed_one_does_not(tiny_dir, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(train_command(tiny_dir, out, "--epochs", "200", "--limit", "1200"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(out / "last.npz", holder)
        for args in (["--resume", out], ["--data-dir", tiny_dir, "--out", out]):
            result = run_cli("train", *args, "--no-progress")
            assert_one_line_error(result, f"{out} is in use by another fastlenet (process "
                                          f"{holder.pid}: ", "fastlenet train")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / LOCK_NAME).exists()  # left behind by the killed holder: it must not block
    result = run_cli("train", "--resume", out, "--epochs", "1", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert not (out / LOCK_NAME).exists()


def test_a_sweep_refuses_a_folder_another_sweep_writes(tiny_dir, tmp_path):
    out = tmp_path / "sweep"
    out.mkdir()
    with lock_folder(out, "sweep"):
        result = run_cli("sweep", "--data-dir", tiny_dir, "--limit", "64", "--lr", "1e-3,2e-3",
                         "--out", out)
    assert_one_line_error(result, f"{out} is in use by another fastlenet (process {os.getpid()}",
                          "one sweep writes a folder at a time")
    assert os.listdir(out) == []


def test_the_lock_is_released_and_taken_again_within_a_process(tmp_path):
    first = lock_folder(tmp_path, "run")
    with pytest.raises(Exception, match="in use by another fastlenet"):
        lock_folder(tmp_path, "run")
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    with lock_folder(tmp_path, "run"):
        assert (tmp_path / LOCK_NAME).read_text().startswith(f"{os.getpid()} ")
    assert os.listdir(tmp_path) == []


def test_a_writer_refused_while_the_holder_writes_its_line_still_names_it(tmp_path):
    # the holder has the lock but not yet its line (the moment CI once caught): the refused
    # writer waits for the line rather than naming "a process that is starting"
    import fcntl
    import threading

    fd = os.open(tmp_path / LOCK_NAME, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    late = threading.Timer(0.3, (tmp_path / LOCK_NAME).write_text, ["4242 fastlenet train\n"])
    late.start()
    try:
        with pytest.raises(Exception, match=r"\(process 4242: fastlenet train\)"):
            lock_folder(tmp_path, "run")
    finally:
        late.join()
        os.close(fd)


def test_a_holder_line_written_over_a_longer_stale_one_is_read_whole(tmp_path):
    # a killed run's longer line is still in the file while the new holder has written its
    # own over the start but not yet cut the file to length: the reader waits for the cut
    import fcntl
    import threading

    path = tmp_path / LOCK_NAME
    path.write_text("4242 fastlenet train\nlenet5 --epochs 8 --out a-killed-run\n")
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    late = threading.Timer(0.3, os.truncate, [path, len("4242 fastlenet train\n")])
    late.start()
    try:
        with pytest.raises(Exception) as refused:
            lock_folder(tmp_path, "run")
        assert "(process 4242: fastlenet train)" in str(refused.value)
        assert "\n" not in str(refused.value)
    finally:
        late.join()
        os.close(fd)
