"""What PyTorch computes from fastlenet's models, through their twins
(benchmarks/torch_twins.py), and the script that writes it as the reference fixtures.

Run once from the repository root (needs torch; ``pip install torch==2.13.0`` on the
development machines; PYTHONPATH puts the root, and so the twins, on the path):

    PYTHONPATH=. python tests/torch_reference.py

It writes ``tests/fixtures/<model>.npz`` with, for a batch of real MNIST test images
(normalised and padded exactly as fastlenet does, so max-pool windows hold the ties
that blank paper makes after ReLU): the inputs, labels, the weights (fastlenet's seeded
initialisation), and what PyTorch computes from them in float64: logits, the mean
cross-entropy, and the gradient of every parameter. The tests compare fastlenet against
these files always, and against torch itself when it is installed.
"""

from pathlib import Path

import numpy as np

from benchmarks.torch_twins import torch_twin

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = ("lenet5", "lenet5-classic", "compact")
BATCH = 16


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
