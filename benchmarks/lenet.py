"""Training of a zoo model (LeNet-5 unless told) on a fastlenet backend and in PyTorch,
set up identically.

Both sides train the same model from the same initial weights (fastlenet's seeded
initialisation, loaded into the PyTorch twin that the model tests compare against,
``torch_twins.py``), with softmax cross-entropy, Adam, batch 128, float32, on
the same preprocessed MNIST images in the same shuffled order:

* :class:`FastLeNetRun` / :class:`TorchRun`: training steps and epochs (Adam, lr 1e-3)
  over a training set held on the contender's device, for the step, epoch and memory
  benchmarks. fastlenet's steps are the trainer's own (:class:`fastlenet.training_step.TrainingStep`,
  so on a GPU backend one CUDA graph replay per step, as in training); PyTorch's run on
  the CPU, on a CUDA device eagerly (``torch-cuda``), or there as one CUDA graph replay per
  step (``torch-cuda-graphs``: gather, forward, loss, backward and capturable Adam);
* :func:`fastlenet_recipe` / :func:`torch_recipe`: the full ``fastlenet train`` recipe
  (the defaults of :class:`fastlenet.config.TrainConfig`, recorded with the results as
  ``recipe``), evaluated on the test set after every epoch, for the time to
  97% and 99% test accuracy. The PyTorch side takes the learning rate of every step from
  fastlenet's own schedule, so the two runs differ only in rounding.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from fastlenet.backends import get_backend
from fastlenet.config import TrainConfig
from fastlenet.data import load_dataset, prepare
from fastlenet.nn import Dropout, SoftmaxCrossEntropy, build_model
from fastlenet.optim import Adam, make_schedule
from fastlenet.train import Trainer
from fastlenet.training_step import TrainingStep

from .torch_contenders import TORCH_CONTENDERS, import_torch, set_up_torch_cuda
from .torch_twins import torch_twin

MODEL = "lenet5"  # the model of the recipes, and of the step and epoch runs unless told
# the zoo models whose steps and epochs the suite times (their twins: torch_twins.py)
MODELS = ("lenet5", "lenet5-classic", "compact")
BATCH = 128
LR = 1e-3
COURSEWORK_TARGET_S = 420.0  # the coursework: > 97% test accuracy in under 7 minutes
ACCURACY_TARGETS = (0.97, 0.99)


def torch_model(seed: int, dtype: str = "float32", model: str = MODEL):
    """The PyTorch twin of ``model`` holding fastlenet's initial weights (and BatchNorm's
    running estimates) for ``seed``."""
    torch = import_torch()
    twin = torch_twin(model).to(getattr(torch, dtype))
    weights = build_model(model, "numpy", dtype=dtype, seed=seed).state_dict()
    # PyTorch's BatchNorm also counts its batches, which fastlenet's does not keep
    missing, unexpected = twin.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()},
                                               strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise KeyError(f"the {model} twin does not match fastlenet's: missing {missing}, "
                       f"unexpected {unexpected}")
    return twin


def load_training_set(images: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``images`` of MNIST's 60,000 training images, preprocessed as in training:
    (n, 1, 32, 32) float32 and (n,) int64 labels."""
    data = prepare(load_dataset("mnist"), val_size=0)
    if images is None or images >= len(data.y_train):
        return data.x_train, data.y_train
    # copies, so that the rest of the set is freed
    return data.x_train[:images].copy(), data.y_train[:images].copy()


class TrainingRun:
    """Training steps of a model over a training set held in memory; subclasses say how."""

    n: int
    batch: int

    def index(self, host_indices: np.ndarray):
        """Host image indices as this run indexes its training set."""
        raise NotImplementedError

    def order(self):
        """One epoch's shuffled order of the training images."""
        return self.index(self.shuffle.permutation(self.n))

    def step(self, idx):
        """One training step on the images ``idx``; returns the loss, not yet read back."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait until the queued work is done."""
        raise NotImplementedError

    def value(self, loss) -> float:
        """A loss returned by :meth:`step`, on the host."""
        raise NotImplementedError

    def gradients(self) -> dict[str, np.ndarray]:
        """The last step's parameter gradients on the host, by fastlenet's names."""
        raise NotImplementedError

    def epoch(self, steps: int | None = None) -> float:
        """Train one epoch (or its first ``steps`` batches); returns the mean loss."""
        order = self.order()
        losses = [self.step(order[s:s + self.batch])
                  for s in range(0, self.n, self.batch)[:steps]]
        self.synchronize()
        return float(np.mean([self.value(v) for v in losses]))


class FastLeNetRun(TrainingRun):
    """fastlenet's ``model`` (LeNet-5 unless told), loss and Adam on one backend, the training set on its device,
    each step the trainer's own :class:`~fastlenet.training_step.TrainingStep` (batch gathered
    on the device; recorded and replayed as one CUDA graph on a GPU backend), its loss
    copied as the trainer keeps it."""

    def __init__(self, backend_name: str, x: np.ndarray, y: np.ndarray, batch: int = BATCH,
                 seed: int = 0, model: str = MODEL, dropout: bool = True):
        self.backend = backend = get_backend(backend_name)
        self.model = build_model(model, backend, seed=seed)
        if not dropout:
            for layer in self.model.layers:
                if isinstance(layer, Dropout):
                    layer.p = 0.0
        self.loss_fn = SoftmaxCrossEntropy(backend=backend)
        self.optimizer = Adam(self.model.parameters(), backend, lr=LR)
        self.x, self.y = backend.asarray(x), backend.asarray(y)
        self.n, self.batch = len(y), batch
        self.shuffle = np.random.default_rng(seed)
        self.training_step = TrainingStep(self.model, self.loss_fn, self.optimizer, self.x, self.y)

    def index(self, host_indices):
        return self.backend.asarray(host_indices)

    def step(self, idx):
        return self.training_step(idx).copy()

    def synchronize(self) -> None:
        self.backend.synchronize()

    def value(self, loss) -> float:
        return float(self.backend.to_numpy(loss))

    def gradients(self):
        return {name: self.backend.to_numpy(p.grad)
                for name, p in self.model.named_parameters().items()}


class TorchRun(TrainingRun):
    """The same training in PyTorch: the twin model, F.cross_entropy, torch.optim.Adam,
    NCHW batches gathered where the training set lives: on the CPU (one thread per core)
    or a CUDA device.

    With ``graphs`` (CUDA only), each step is one replay of a CUDA graph of the whole step
    (gather by a static index tensor, forward, loss, backward, ``Adam(capturable=True)``),
    recorded per batch length as PyTorch's documentation shows for whole networks: a few
    warm-up steps on a side stream, then the capture; the weights and Adam's state are
    then put back in place to the initial ones, so the first timed step is the first step.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch: int = BATCH, seed: int = 0,
                 device: str = "cpu", graphs: bool = False, model: str = MODEL,
                 dropout: bool = True):
        self.torch = torch = import_torch()
        self.device = torch.device(device)
        if self.device.type == "cuda":
            set_up_torch_cuda(torch)
        self.model = torch_model(seed, model=model).to(self.device)
        if not dropout:
            for module in self.model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR, capturable=graphs)
        self.x, self.y = torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device)
        self.n, self.batch = len(y), batch
        self.shuffle = np.random.default_rng(seed)
        # batch length -> (graph, static indices, static loss, static gradients)
        self.graphs: dict = {}
        self._grads = None  # the gradients of the last replay (each graph has its own)
        if graphs:
            self._record({min(batch, self.n), self.n % batch} - {0})

    def index(self, host_indices):
        return self.torch.from_numpy(host_indices).to(self.device)

    def _train(self, idx):
        """One eager step (also the body the graphs record)."""
        loss = self.torch.nn.functional.cross_entropy(self.model(self.x[idx]), self.y[idx])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _record(self, lengths) -> None:
        torch = self.torch
        initial = {k: v.clone() for k, v in self.model.state_dict().items()}
        pool = None
        for length in sorted(lengths, reverse=True):
            idx = self.index(np.arange(length))
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._train(idx)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                loss = self._train(idx)
            pool = graph.pool()
            self.graphs[length] = graph, idx, loss, [p.grad for p in self.model.parameters()]
        with torch.no_grad():  # in place: the graphs hold these tensors' addresses
            for key, value in self.model.state_dict().items():
                value.copy_(initial[key])
            for state in self.optimizer.state.values():
                for value in state.values():
                    if torch.is_tensor(value):
                        value.zero_()

    def step(self, idx):
        if not self.graphs:
            return self._train(idx)
        graph, static_idx, loss, self._grads = self.graphs[len(idx)]
        static_idx.copy_(idx)
        graph.replay()
        return loss.clone()  # the next replay overwrites it

    def synchronize(self) -> None:
        """Wait for the device (PyTorch's CPU operations return when done)."""
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def value(self, loss) -> float:
        return float(loss)

    def gradients(self):
        grads = self._grads or [p.grad for p in self.model.parameters()]
        return {name: g.detach().cpu().numpy()
                for (name, _), g in zip(self.model.named_parameters(), grads)}


def make_run(contender: str, x: np.ndarray, y: np.ndarray, batch: int = BATCH, seed: int = 0,
             model: str = MODEL, dropout: bool = True):
    """A :class:`TorchRun` of ``model`` for a PyTorch contender (``torch``, ``torch-cuda``,
    ``torch-cuda-graphs``), else a :class:`FastLeNetRun` on that backend. Without
    ``dropout`` its Dropout layers pass everything: each contender draws its masks from its
    own generator, so a step checked against another contender's runs without them."""
    if contender in TORCH_CONTENDERS:
        device, graphs = TORCH_CONTENDERS[contender]
        return TorchRun(x, y, batch, seed, device=device, graphs=graphs, model=model,
                        dropout=dropout)
    return FastLeNetRun(contender, x, y, batch, seed, model=model, dropout=dropout)


# ------------------------------------------------------------ time to accuracy
def time_to_accuracy(epochs: list[dict], target: float) -> dict | None:
    """The first epoch record with test accuracy >= ``target``, as ``{"epoch",
    "seconds" (training time up to its end, evaluation excluded), "test_accuracy"}``;
    None when the run never reached it."""
    for record in epochs:
        if record["test_accuracy"] >= target:
            return {"epoch": record["epoch"], "seconds": record["train_seconds"],
                    "test_accuracy": record["test_accuracy"]}
    return None


# the TrainConfig fields that define the recipe, saved with the time-to-accuracy results
RECIPE_KEYS = ("recipe", "epochs", "batch_size", "optimizer", "lr", "beta1", "beta2",
               "label_smoothing", "schedule", "val_size")


def fastlenet_recipe(backend_name: str, seed: int, out: Path,
                     stop_at: float = max(ACCURACY_TARGETS)) -> list[dict]:
    """``fastlenet train --backend NAME --seed SEED`` (the default recipe) through the real
    trainer, stopped after the first epoch whose test accuracy reaches ``stop_at`` (the
    schedule still spans all the recipe's epochs, so the epochs run are the same as in the
    full run). Returns the trainer's per-epoch history records."""
    trainer = Trainer(TrainConfig(backend=backend_name, seed=seed), out=out, progress=False,
                      log=None, on_epoch_end=lambda record: record["test_accuracy"] >= stop_at)
    trainer.run()
    return trainer.state.history["epochs"]


def torch_recipe(seed: int, stop_at: float = max(ACCURACY_TARGETS),
                 device: str = "cpu") -> list[dict]:
    """The same recipe in PyTorch (eager, on ``device``): the trainer's data split, initial
    weights, shuffled order and per-step learning rates; per-epoch records with the keys
    :func:`time_to_accuracy` reads (timing excludes the evaluation, as the trainer's)."""
    torch = import_torch()
    device = torch.device(device)
    if device.type == "cuda":
        set_up_torch_cuda(torch)
    config = TrainConfig(seed=seed).validate()
    if (config.model, config.optimizer, config.weight_decay, config.augment) != (MODEL, "adam", 0.0, False):
        raise ValueError("the PyTorch twin follows a LeNet-5 / Adam recipe without weight decay "
                         "or augmentation; TrainConfig's defaults changed, update torch_recipe")
    data = prepare(load_dataset(config.dataset, config.data_dir), val_size=config.val_size,
                   seed=config.seed, train_limit=config.train_limit)
    model = torch_model(config.seed, config.dtype).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr,
                                 betas=(config.beta1, config.beta2))
    n, batch = len(data.y_train), config.batch_size
    steps_per_epoch = math.ceil(n / batch)
    schedule = make_schedule(config.schedule, config.lr, total_steps=config.epochs * steps_per_epoch,
                             steps_per_epoch=steps_per_epoch)
    shuffle = np.random.default_rng(config.seed)
    x, y = torch.from_numpy(data.x_train).to(device), torch.from_numpy(data.y_train).to(device)
    x_test = torch.from_numpy(data.x_test).to(device)
    y_test = torch.from_numpy(data.y_test).to(device)
    cross_entropy = torch.nn.functional.cross_entropy
    records, step, train_seconds = [], 0, 0.0
    for epoch in range(1, config.epochs + 1):
        order = torch.from_numpy(shuffle.permutation(n)).to(device)
        model.train()
        tick = time.perf_counter()
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            for group in optimizer.param_groups:
                group["lr"] = schedule(step)
            loss = cross_entropy(model(x[idx]), y[idx], label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - tick
        train_seconds += seconds
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x_test[s:s + 1000]).argmax(1) == y_test[s:s + 1000]).sum())
                          for s in range(0, len(y_test), 1000))
        records.append({"epoch": epoch, "test_accuracy": correct / len(y_test),
                        "epoch_seconds": seconds, "train_seconds": train_seconds})
        if records[-1]["test_accuracy"] >= stop_at:
            break
    return records
