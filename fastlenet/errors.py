"""User-facing errors.

Every problem a user can cause (bad files, bad options, missing backends, corrupt
checkpoints, diverging training) is raised as a ``FastLeNetError`` whose message is one
line naming the problem and the fix. The CLI prints that line and exits non-zero; library
users can catch the base class.
"""


class FastLeNetError(Exception):
    """Base class: ``str(err)`` is a complete one-line message for the user."""


class DataError(FastLeNetError):
    """A dataset file is missing, truncated, corrupt or inconsistent."""


class BackendUnavailableError(FastLeNetError):
    """The requested backend is unknown or cannot run here."""


class CheckpointError(FastLeNetError):
    """A checkpoint is missing, corrupt, or belongs to another model."""


class ConfigError(FastLeNetError):
    """An option value is out of range or unknown."""


class TrainingDivergedError(FastLeNetError):
    """The loss became NaN or infinite."""


class RunFolderError(FastLeNetError):
    """A run folder is missing, incomplete, or holds damaged files."""


class ArrayError(FastLeNetError, ValueError, TypeError):
    """An array handed to a kernel, layer or model has the wrong shape, dtype or layout.

    Also a ValueError and a TypeError, the exceptions NumPy raises for such mistakes, so
    code written against those keeps working."""


class FolderInUseError(FastLeNetError):
    """Another process is writing the run or sweep folder (fastlenet.folder_lock)."""


class DeviceError(FastLeNetError):
    """The device failed: out of memory, lost mid-run, or its compiler or driver broken."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during a training run; ``str(err)`` says where the run stands and how to
    continue it."""
