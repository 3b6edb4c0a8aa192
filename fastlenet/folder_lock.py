"""One writer per run or sweep folder: an OS lock on a file inside the folder.

The lock is ``fcntl.flock`` on ``<folder>/.fastlenet.lock`` (``msvcrt.locking`` on
Windows). The OS drops it when its holder exits, however it exits, so a lock file left by
a killed run never blocks its resume; the file only names the holder for the message.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from .errors import FolderInUseError, RunFolderError

LOCK_NAME = ".fastlenet.lock"
_WINDOWS_LOCK_OFFSET = 1 << 20  # the byte Windows locks, past the holder's line, so it reads


class FolderLock:
    """The lock of one folder, held from :meth:`acquire` to :meth:`release` (or the end of
    the process). ``what`` names the folder in messages: "run" or "sweep"."""

    def __init__(self, folder: str | os.PathLike, what: str = "run"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        """Take the lock, or raise FolderInUseError naming the process that holds it."""
        while self._fd is None:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o666)
            except OSError as exc:
                raise self._unwritable(exc) from None
            try:
                locked = _try_lock(fd)
            except OSError as exc:  # e.g. NFS, whose flock wants a writable descriptor
                os.close(fd)
                raise RunFolderError(f"cannot lock the {self.what} folder {self.folder} "
                                     f"({exc.strerror}); choose an --out on a local disk") from None
            if not locked:
                holder = _holder(fd, self.path)
                os.close(fd)
                raise FolderInUseError(
                    f"{self.folder} is in use by another fastlenet ({holder}); one {self.what} "
                    "writes a folder at a time: wait for it to end, or choose another --out")
            if _same_file(fd, self.path):
                self._fd = fd
            else:  # its last holder removed the file between our open and lock: take the new one
                _unlock(fd)
                os.close(fd)
        command = shlex.join(["fastlenet", *sys.argv[1:]])
        command = command if len(command) <= 120 else command[:117] + "..."
        # written through a descriptor of its own: the lock's is read-only, so that holding
        # it does not keep the folder's file system from being remounted read-only;
        # overwritten, then cut to length, so a reader finds a whole line or waits for one
        try:
            line = f"{os.getpid()} {command}\n".encode()
            wfd = os.open(self.path, os.O_WRONLY | getattr(os, "O_BINARY", 0))
            try:
                os.write(wfd, line)
                os.ftruncate(wfd, len(line))
            finally:
                os.close(wfd)
        except OSError as exc:
            self.release()
            raise self._unwritable(exc) from None
        return self

    def _unwritable(self, exc: OSError) -> RunFolderError:
        return RunFolderError(f"cannot write in the {self.what} folder {self.folder} "
                              f"({exc.strerror}); make it writable or choose another --out")

    def release(self) -> None:
        """Remove the lock file and drop the lock (removing first, so that a process that
        opened the file meanwhile sees it gone and takes a new one)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            self.path.unlink()
        except OSError:  # a read-only folder by now, or Windows: the lock still ends below
            pass
        _unlock(fd)
        os.close(fd)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def lock_folder(folder: str | os.PathLike, what: str = "run") -> FolderLock:
    """Lock ``folder`` (which must exist) for this process; see :class:`FolderLock`."""
    return FolderLock(folder, what).acquire()


def _holder(fd: int, path: Path, wait: float = 2.0) -> str:
    """Who holds the lock, from the line the holder wrote: 'process 123: fastlenet train ...'.
    A holder writes its line just after taking the lock, so a file without a whole line
    (empty, or a line being overwritten) is read again for up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            text = os.read(fd, 400).decode(errors="replace")
        except OSError:
            text = ""
        first, newline, rest = text.partition("\n")
        pid, _, command = first.strip().partition(" ")
        whole = pid.isdigit() and newline and not rest.strip()
        if whole or time.monotonic() > deadline or not _same_file(fd, path):
            break
        time.sleep(0.02)
    if not pid.isdigit():
        return "a process that is starting"
    return f"process {pid}" + (f": {command}" if command else "")


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


if sys.platform == "win32":
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        except OSError:
            pass
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
