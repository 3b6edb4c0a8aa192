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

__version__ = "0.1.0"

from .backends import get_backend  # noqa: E402
from .errors import FastLeNetError  # noqa: E402
from .nn import build_model  # noqa: E402
from .config import TrainConfig  # noqa: E402
from .evaluation import evaluate  # noqa: E402
from .train import train  # noqa: E402

__all__ = ["__version__", "get_backend", "build_model", "train", "TrainConfig", "evaluate",
           "FastLeNetError"]
