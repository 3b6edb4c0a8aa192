"""Small MNIST-format datasets cut from the bundled MNIST, for quick end-to-end runs."""

from pathlib import Path

from fastlenet.data import FILES, load_dataset, write_idx


def write_tiny_mnist(folder: Path, n_train: int = 1200, n_test: int = 300) -> Path:
    """Write the first ``n_train`` / ``n_test`` MNIST images and labels as IDX files."""
    mnist = load_dataset("mnist")
    folder.mkdir(parents=True, exist_ok=True)
    arrays = (mnist.train_images[:n_train], mnist.train_labels[:n_train],
              mnist.test_images[:n_test], mnist.test_labels[:n_test])
    for stem, array in zip(FILES, arrays):
        write_idx(folder / f"{stem}.gz", array)
    return folder
