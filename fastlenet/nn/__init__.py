"""Neural-network building blocks with explicit backward passes, and the model zoo.

Build a zoo model and take one training step by hand::

    from fastlenet.nn import SoftmaxCrossEntropy, build_model

    model = build_model("lenet5", backend="numpy", dtype="float32", seed=0)
    loss_fn = SoftmaxCrossEntropy(label_smoothing=0.1, backend=model.backend)
    x = model.backend.to_batch_last(images_nchw)     # (1, 32, 32, N), batch last
    loss = loss_fn.forward(model.forward(x), labels)  # 0-d device array
    model.backward(loss_fn.backward())                # fills every Parameter.grad
    for p in model.parameters():
        p.data -= 0.01 * p.grad

Or compose layers into a custom model::

    from fastlenet.nn import Conv2d, Flatten, Linear, MaxPool2d, Model, ReLU

    model = Model([Conv2d(1, 8, 5), ReLU(), MaxPool2d(2), Flatten(), Linear(8 * 14 * 14, 10)],
                  name="tiny", backend="numpy")
    print(model.summary_text())

Layers work on batch-innermost arrays, (C, H, W, N) maps and (F, N) vectors, and call
only their backend's kernels, so the same model runs on every backend. See
:mod:`fastlenet.nn.base` for the layer contract and :mod:`fastlenet.nn.models` for the
zoo; the layers live by kind (conv, pool, dense, activation, regularization), beside
parameter, sequential, loss and init.
"""

from .activation import ReLU, Sigmoid, Tanh
from .base import Layer
from .conv import Conv2d
from .dense import Flatten, Linear
from .init import INITIALIZERS, glorot_uniform, he_normal, lecun_normal
from .loss import SoftmaxCrossEntropy
from .models import DTYPES, MODELS, Model, build_model
from .parameter import Parameter
from .pool import AvgPool2d, MaxPool2d, ReLUMaxPool2d
from .regularization import BatchNorm, Dropout
from .sequential import Sequential

__all__ = [
    "Parameter", "Layer", "Sequential",
    "Conv2d", "MaxPool2d", "AvgPool2d", "ReLUMaxPool2d", "Linear", "ReLU", "Tanh", "Sigmoid",
    "Flatten",
    "Dropout", "BatchNorm", "SoftmaxCrossEntropy",
    "Model", "MODELS", "DTYPES", "build_model",
    "INITIALIZERS", "he_normal", "glorot_uniform", "lecun_normal",
]
