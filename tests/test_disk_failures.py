"""A disk that fills up or a folder that turns read-only while a checkpoint, report or export
is written: one line, no half-written file, and the previous checkpoint still loads.

The writes fail for real: a file-size limit (RLIMIT_FSIZE, any user), a full tmpfs and a
tmpfs remounted read-only (where this user may mount, as root in CI containers; else a
chmod for the read-only case, and a skip for the full disk)."""

import contextlib
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastlenet.checkpoint import load_checkpoint
from fastlenet.cli import main
from fastlenet.config import TrainConfig
from fastlenet.errors import RunFolderError
from fastlenet.train import Trainer, train

from helpers import assert_one_line_error


def config(tiny_dir, **kw):
    return TrainConfig(**{**dict(dataset="custom", data_dir=str(tiny_dir), epochs=3, batch_size=64,
                                 val_size=64, train_limit=128, backend="numpy", seed=1), **kw})


def leftovers(folder: Path, lock: bool = True) -> list[str]:
    """Temporaries, and lock files (which a read-only folder keeps, harmlessly: ``lock``)."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or
                  (lock and p.name == ".fastlenet.lock"))


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    """A small tmpfs mounted at ``folder`` for the test; a skip where mounting is refused."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def stop_writes_after_epoch_1(make_it_fail):
    def on_epoch_end(record):
        if record["epoch"] == 1:
            make_it_fail()
    return on_epoch_end


def check_stopped_with_epoch_1_kept(info, out, reason, lock=True):
    message = str(info.value)
    assert "\n" not in message
    assert message == (f"cannot write {out / 'last.npz'} ({reason}); training stopped in epoch 2 "
                       f"of 3; {out / 'last.npz'} holds epoch 1; continue with: fastlenet train "
                       f"--resume {out} once the disk has room or the folder is writable")
    kept = load_checkpoint(out)
    assert kept.meta["epoch"] == 1 and all(np.isfinite(v).all() for v in kept.params.values())
    assert load_checkpoint(out / "best.npz").meta["epoch"] == 1
    assert leftovers(out, lock) == []


def test_a_file_size_limit_stops_a_resumed_run_in_one_line(tiny_dir, tmp_path):
    out = tmp_path / "run"
    train(config(tiny_dir, epochs=1), out=out, log=None)
    size = (out / "last.npz").stat().st_size

    def limit():  # the checkpoint no longer fits; the small JSON files do
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 4, size // 4))

    result = subprocess.run([sys.executable, "-m", "fastlenet", "train", "--resume", str(out),
                             "--epochs", "2", "--no-progress"], capture_output=True, text=True,
                            timeout=300, preexec_fn=limit)
    assert_one_line_error(result, f"cannot write {out / 'last.npz'} (File too large); training "
                                  f"stopped in epoch 2 of 2; {out / 'last.npz'} holds epoch 1")
    assert load_checkpoint(out).meta["epoch"] == 1 and leftovers(out) == []


def test_a_full_disk_stops_training_and_exports_in_one_line(tiny_dir, tmp_path, capsys):
    with tmpfs(tmp_path / "disk", "4m") as disk:
        out = disk / "run"

        def fill():
            with open(disk / "filler", "wb") as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()

        trainer = Trainer(config(tiny_dir), out=out, log=None,
                          on_epoch_end=stop_writes_after_epoch_1(fill))
        with pytest.raises(RunFolderError) as info:
            trainer.run()
        check_stopped_with_epoch_1_kept(info, out, "No space left on device")

        for command in (["export", out / "best.npz", "-o", disk / "w.npz"],
                        ["export", out / "best.npz", "-o", disk / "w.onnx"],
                        ["demo", out / "best.npz", "-o", disk / "demo.html"]):
            assert main(list(map(str, command))) == 2
            assert_one_line_error(capsys.readouterr().err, f"cannot write {command[-1]}: No space "
                                  "left on device; choose another output path with -o")
            assert not Path(command[-1]).exists()
        assert main(["report", str(out), "--out", str(disk / "report")]) == 2
        assert_one_line_error(capsys.readouterr().err, "No space left on device")
        assert leftovers(disk) == []

        (disk / "filler").unlink()  # room again: the run continues from its checkpoint
        assert train(resume=out, log=None)["epochs"] == 3


def test_a_read_only_folder_stops_training_and_exports_in_one_line(tiny_dir, tmp_path, capsys):
    with contextlib.ExitStack() as stack:
        if os.geteuid() == 0:  # root writes through permissions: remount a tmpfs read-only
            disk = stack.enter_context(tmpfs(tmp_path / "disk", "16m"))
            read_only = lambda: subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
            reason = "Read-only file system"
        else:
            disk = tmp_path / "disk"
            disk.mkdir()
            read_only = lambda: (disk / "run").chmod(0o555)
            stack.callback(lambda: (disk / "run").chmod(0o755))
            reason = "Permission denied"
        out = disk / "run"
        trainer = Trainer(config(tiny_dir), out=out, log=None,
                          on_epoch_end=stop_writes_after_epoch_1(read_only))
        with pytest.raises(RunFolderError) as info:
            trainer.run()
        check_stopped_with_epoch_1_kept(info, out, reason, lock=False)
        assert main(["export", str(out / "best.npz")]) == 2
        assert_one_line_error(capsys.readouterr().err, f"cannot write {out / 'best.onnx'}: {reason}")
        assert main(["train", "--resume", str(out), "--no-progress"]) == 2
        assert_one_line_error(capsys.readouterr().err, f"cannot write in the run folder {out} ({reason})")
