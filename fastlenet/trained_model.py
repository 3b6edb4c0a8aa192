"""The model a path names to the commands that use one (evaluate, predict, export, demo,
report): a checkpoint file, or a run folder meaning its ``best.npz``.

``best.npz`` (the best validation accuracy) is what a user means by "the model"; resuming
alone reads a run folder's ``last.npz`` (fastlenet.checkpoint).
"""

from __future__ import annotations

import os
from pathlib import Path

from .checkpoint import load_model
from .errors import CheckpointError
from .runs import run_status

# how every such command's help names its argument
PATH_HELP = "a .npz checkpoint, or a run folder (meaning its best.npz, the best validation accuracy)"


def model_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint file ``path`` names: itself, or a run folder's best.npz.
    CheckpointError (one line) for a run folder without one."""
    path = Path(path)
    if not path.is_dir():
        return path
    best = path / "best.npz"
    if best.is_file():
        return best
    if run_status(path) == "diverged":
        raise CheckpointError(f"{path} holds no checkpoint: the run diverged in its first "
                              "epoch; train again with a lower --lr")
    if (path / "config.json").is_file():
        raise CheckpointError(f"{path} holds no checkpoint yet: the run stopped before its first "
                              f"epoch ended; 'fastlenet train --resume {path}' trains it with "
                              "its settings")
    raise CheckpointError(f"{path}: no best.npz; pass a .npz checkpoint or a run folder "
                          "written by 'fastlenet train'")


def load_trained_model(path: str | os.PathLike, backend="auto"):
    """:func:`fastlenet.checkpoint.load_model` of :func:`model_checkpoint`'s file:
    ``(model, meta)``."""
    return load_model(model_checkpoint(path), backend)
