"""Where a file made from a checkpoint goes: beside it by default, never over it."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError
from .trained_model import model_checkpoint


def output_beside(checkpoint: str | os.PathLike, out: str | os.PathLike | None,
                  suffix: str) -> Path:
    """``out``, or by default the checkpoint's stem plus ``suffix`` beside it
    (RUN/best.npz or RUN -> RUN/best<suffix>). ConfigError when that is the checkpoint itself,
    which writing would destroy."""
    source = model_checkpoint(checkpoint)
    path = Path(out) if out is not None else source.with_name(source.stem + suffix)
    if path.exists() and source.exists() and path.resolve() == source.resolve():
        raise ConfigError(f"{path} is the checkpoint itself; choose another output path with -o")
    return path
