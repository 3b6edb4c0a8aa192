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

from .backends import get_backend
from .config import TrainConfig
from .errors import FastLeNetError
from .evaluation import evaluate
from .nn import build_model
from .train import train
from .version import __version__

__all__ = ["__version__", "get_backend", "build_model", "train", "TrainConfig", "evaluate",
           "FastLeNetError"]
