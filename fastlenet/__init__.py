"""fastlenet: LeNet-5 on MNIST from scratch, with hand-written forward and backward
passes running on interchangeable backends: NumPy im2col (the reference), Numba-JIT CPU
loops, and CuPy with hand-written CUDA kernels.

Library use::

    import fastlenet
    metrics = fastlenet.train(fastlenet.TrainConfig(epochs=2), out="runs/demo")
    model = fastlenet.build_model("lenet5", backend="numpy", seed=0)

Only NumPy (and tqdm, for the progress bar) is needed; the other backends load lazily
when asked for (``get_backend("numba")``), and say what is missing when they cannot.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING

from .version import __version__

# name -> the module that defines it; imported on first use, so that the command's entry
# point (fastlenet.entry) starts before NumPy loads and a Ctrl-C then ends quietly
_EXPORTS = {"get_backend": ".backends", "TrainConfig": ".config", "FastLeNetError": ".errors",
            "evaluate": ".evaluation", "build_model": ".nn", "train": ".train"}

__all__ = ["__version__", "get_backend", "build_model", "train", "TrainConfig", "evaluate",
           "FastLeNetError"]

if TYPE_CHECKING:
    from .backends import get_backend
    from .config import TrainConfig
    from .errors import FastLeNetError
    from .evaluation import evaluate
    from .nn import build_model
    from .train import train


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    elif "." not in name and importlib.util.find_spec(f"{__name__}.{name}") is not None:  # fastlenet.nn and such
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """Keeps ``fastlenet.train`` the function: importing the submodule of the same name
    would otherwise bind the module in its place (an eager import used to rebind it)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType) and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
