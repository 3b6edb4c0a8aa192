"""PyTorch twins of fastlenet's models, and the script that writes the reference fixtures.

Run once (needs torch; ``pip install torch==2.13.0`` on the development machines):

    python tests/torch_reference.py

It writes ``tests/fixtures/<model>.npz`` with, for a batch of real MNIST test images
(normalised and padded exactly as fastlenet does, so max-pool windows hold the ties
that blank paper makes after ReLU): the inputs, labels, the weights (fastlenet's seeded
initialisation), and what PyTorch computes from them in float64: logits, the mean
cross-entropy, and the gradient of every parameter. The tests compare fastlenet against
these files always, and against torch itself when it is installed.

Each twin is an ``nn.Sequential`` with the same layers in the same order as fastlenet's
model, so parameter names ("0.weight", ...) and shapes agree one to one.
"""

from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = ("lenet5", "lenet5-classic", "compact")
BATCH = 16


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


def mnist_batch(n: int = BATCH):
    """The first ``n`` MNIST test images, preprocessed as in training, and their labels."""
    from fastlenet.data import load_dataset, preprocess

    mnist = load_dataset("mnist")
    x = preprocess(mnist.test_images[:n], 0.1307, 0.3081).astype(np.float64)
    return x, mnist.test_labels[:n].astype(np.int64)


def torch_reference(name: str, params: dict, x: np.ndarray, y: np.ndarray) -> dict:
    """Logits, loss and parameter gradients from PyTorch in float64, train mode.

    Dropout layers are switched to eval (identity) so the result is deterministic; the
    fastlenet side does the same by setting their probability to zero.
    """
    import torch

    twin = torch_twin(name).double()
    state = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in params.items()}
    missing, unexpected = twin.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    twin.train()
    for module in twin.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    logits = twin(torch.from_numpy(x))
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
    loss.backward()
    grads = {k: p.grad.numpy().copy() for k, p in twin.named_parameters()}
    return {"logits": logits.detach().numpy(), "loss": np.array(loss.item()), "grads": grads}


def main() -> None:
    from fastlenet.nn import build_model

    FIXTURES.mkdir(exist_ok=True)
    x, y = mnist_batch()
    for name in MODELS:
        params = build_model(name, "numpy", dtype="float64", seed=1).state_dict()
        ref = torch_reference(name, params, x, y)
        arrays = {"x": x, "y": y, "logits": ref["logits"], "loss": ref["loss"]}
        arrays.update({f"param/{k}": v for k, v in params.items()})
        arrays.update({f"grad/{k}": v for k, v in ref["grads"].items()})
        path = FIXTURES / f"{name}.npz"
        np.savez_compressed(path, **arrays)
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
