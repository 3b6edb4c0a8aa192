"""PyTorch twins of fastlenet's models: each an ``nn.Sequential`` with the same layers in
the same order as fastlenet's model, so parameter names ("0.weight", ...) and shapes agree
one to one.

One definition for the model tests (tests/torch_reference.py compares fastlenet against
them) and for PyTorch's side of the benchmarks (lenet.py). It lives in the benchmarks
package because the tests may import the suite (they test it) but the suite must not
need tests/, which is not a package.
"""


def torch_twin(name: str):
    """The PyTorch ``nn.Sequential`` equal to fastlenet's model ``name``."""
    from torch import nn

    if name == "lenet5":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    if name == "lenet5-classic":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(16, 120, 5), nn.Tanh(), nn.Flatten(),
            nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10))
    if name == "compact":
        return compact_twin()
    raise KeyError(name)


def compact_twin():
    """Built from fastlenet's own layer list, so the twin follows the model's definition."""
    from torch import nn

    from fastlenet import nn as fnn
    from fastlenet.nn import build_model

    layers = []
    for layer in build_model("compact", "numpy").layers:
        kind = type(layer)
        if kind is fnn.Conv2d:
            layers.append(nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                                    stride=layer.stride, padding=layer.padding,
                                    bias=layer.bias is not None))
        elif kind is fnn.BatchNorm:
            conv_input = len(layers) and isinstance(layers[-1], nn.Conv2d)
            bn = nn.BatchNorm2d if conv_input else nn.BatchNorm1d
            layers.append(bn(layer.num_features, eps=layer.eps, momentum=layer.momentum))
        elif kind is fnn.Linear:
            layers.append(nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None))
        elif kind in (fnn.MaxPool2d, fnn.AvgPool2d):
            pool = nn.MaxPool2d if kind is fnn.MaxPool2d else nn.AvgPool2d
            layers.append(pool(layer.size, layer.stride))
        elif kind is fnn.Dropout:
            layers.append(nn.Dropout(layer.p))
        else:
            layers.append({fnn.ReLU: nn.ReLU, fnn.Flatten: nn.Flatten, fnn.Tanh: nn.Tanh,
                           fnn.Sigmoid: nn.Sigmoid}[kind]())
    return nn.Sequential(*layers)
