"""The checkpoint file format: saving, loading without pickle, and the model it holds.

A checkpoint is an ``.npz`` archive read with ``allow_pickle=False``:

- ``param/<name>``: every parameter and buffer of the model (host numpy arrays),
- ``optim/<key>``: the optimizer's state (moments, step count),
- ``meta``: one JSON document as a 0-d unicode array: format version, model name, dtype,
  the training config, epochs and steps done, RNG states, normalisation constants,
  class names and the history so far.

Checkpoints are written atomically (fastlenet.atomic_write).
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic_write import atomic_open
from .errors import CheckpointError
from .nn import MODELS, build_model

FORMAT = "fastlenet-checkpoint"
FORMAT_VERSION = 1


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The checkpoint file a path names to resume from: a run folder means its
    ``last.npz`` (a model to use is its ``best.npz``: load_model)."""
    path = Path(path)
    return path / "last.npz" if path.is_dir() else path


@dataclass
class Checkpoint:
    """What a checkpoint file holds, as host objects."""

    params: dict[str, np.ndarray]
    optim: dict[str, np.ndarray]
    meta: dict


def save_checkpoint(path: str | os.PathLike, params: dict, optim: dict, meta: dict) -> None:
    arrays = {f"param/{k}": np.asarray(v) for k, v in params.items()}
    arrays.update({f"optim/{k}": np.asarray(v) for k, v in optim.items()})
    meta = {"format": FORMAT, "version": FORMAT_VERSION, **meta}
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic_open(path) as f:
        np.savez(f, **arrays)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint file, or a run folder (its ``last.npz``).

    Raises CheckpointError with one line for a missing, truncated or foreign file.
    """
    path = checkpoint_file(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; pass a .npz written by "
                              "'fastlenet train' or its run folder")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a checkpoint (a fastlenet checkpoint is a .npz "
                              "archive); it may be truncated, or another kind of file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
        meta = json.loads(str(arrays.pop("meta")))
    except KeyError:
        raise CheckpointError(f"{path}: not a fastlenet checkpoint (no 'meta' entry)") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint "
                              f"({type(exc).__name__}: {exc}); use another checkpoint, "
                              "e.g. best.npz or last.npz of the run") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fastlenet checkpoint")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('version')} "
                              f"is not supported by this fastlenet (reads {FORMAT_VERSION})")
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    optim = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
    return Checkpoint(params=params, optim=optim, meta=meta)


def load_model(path: str | os.PathLike, backend="auto"):
    """Rebuild the model stored in a checkpoint on ``backend``; returns ``(model, meta)``.
    A run folder means its ``best.npz``, as for every command that uses a model.

    ``meta`` carries what inference needs besides the weights: ``mean`` and ``std`` of
    the normalisation, ``class_names``, ``dataset``.
    """
    from .trained_model import model_checkpoint  # it reads run folders' status (runs.py)

    path = model_checkpoint(path)
    ckpt = load_checkpoint(path)
    missing = [key for key in ("model", "mean", "std") if key not in ckpt.meta]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}; it was not "
                              "written by 'fastlenet train'")
    name = ckpt.meta["model"]
    if name not in MODELS:
        raise CheckpointError(f"{path}: checkpoint holds unknown model '{name}'; "
                              f"this fastlenet knows: {', '.join(MODELS)}")
    model = build_model(name, backend, dtype=ckpt.meta.get("dtype", "float32"))
    try:
        model.load_state_dict(ckpt.params)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model.eval()
    return model, ckpt.meta

