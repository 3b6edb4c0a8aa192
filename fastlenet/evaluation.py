"""Scoring a trained model: loss, accuracy and confusion on held-out images, and the test
set a checkpoint is scored on."""

from __future__ import annotations

import os

import numpy as np

from .data import Dataset, load_dataset, preprocess
from .nn import SoftmaxCrossEntropy


def evaluate(model, x, y, batch_size: int = 1000):
    """Loss, accuracy and predictions of ``model`` (eval mode) on a host set.

    x: (N, 1, 32, 32) float host array; y: (N,) int labels.
    Returns ``(mean_loss, accuracy, predictions (N,) int64 host array)``; an empty set
    gives NaN loss and accuracy.
    """
    backend = model.backend
    if len(x) == 0:
        return float("nan"), float("nan"), np.zeros(0, dtype=np.int64)
    loss_fn = SoftmaxCrossEntropy(backend=backend)
    total_loss = backend.xp.zeros((), dtype=np.float64)
    preds = []
    for start, logits in model.batched_logits(x, batch_size):
        yb = backend.asarray(y[start:start + logits.shape[1]])
        total_loss += loss_fn.forward(logits, yb) * logits.shape[1]
        preds.append(logits.argmax(axis=0))
    predictions = backend.to_numpy(backend.xp.concatenate(preds)).astype(np.int64)
    loss = float(backend.to_numpy(total_loss)) / len(x)
    return loss, float((predictions == np.asarray(y)).mean()), predictions


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts: row = true class, column = predicted class."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (np.asarray(labels), np.asarray(predictions)), 1)
    return confusion


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Each class's recall, (K,): correct / images of that class (0 for an absent class)."""
    return confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)


def load_test_set(meta: dict, dataset: str | None = None, data_dir: str | os.PathLike | None = None
                  ) -> tuple[np.ndarray, np.ndarray, Dataset]:
    """The test set a checkpoint's model is evaluated on, preprocessed with its constants.

    By default the data the checkpoint was trained on (``meta``'s dataset and data
    folder); ``dataset`` / ``data_dir`` choose other data, a folder alone meaning the
    user's own. Returns ``(x (N, 1, 32, 32) float32, y (N,) int64, Dataset)``.
    """
    if dataset is None and data_dir is None:
        dataset, data_dir = meta["dataset"], meta.get("config", {}).get("data_dir")
    data = load_dataset(dataset, data_dir)
    x = preprocess(data.test_images, meta["mean"], meta["std"])
    return x, data.test_labels.astype(np.int64), data
