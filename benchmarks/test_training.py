"""Whole-model benchmarks: a training step, a full epoch, and the time to 97% and 99%
test accuracy, per contender (batch 128, Adam, float32).

The step and the epoch run for each model of lenet.MODELS (LeNet-5, lenet5-classic,
compact), each against PyTorch running its twin; LeNet-5's groups are ``training step``
and ``epoch``, another model's carry its name (``epoch compact``). The time to accuracy
runs the default recipe, LeNet-5's.

* ``test_training_step``: one step (gather the batch, forward, loss, backward, Adam),
  timed ``--step-rounds`` times; the loss and gradients of a first step (dropout off, as
  each contender draws its own masks) are checked against the NumPy backend's from the
  same weights and images.
* ``test_epoch``: ``--epoch-images`` images (default all 60,000). Each timed epoch of a
  contender follows an untimed epoch of every PyTorch contender of the session
  (``torch``, ``torch-cuda``, ``torch-cuda-graphs``, those that run here), so they share
  the machine's drift and other users' load; ``extra_info["ratio_to_<partner>"]`` (e.g.
  ``ratio_to_torch``, ``ratio_to_torch-cuda``) is the ratio of the medians, the figure
  to quote.
* ``test_time_to_accuracy``: the default ``fastlenet train`` recipe (fastlenet.config's
  RECIPES, without augmentation) with the real trainer, stopped at 99% test accuracy,
  and the same recipe in PyTorch; training seconds (evaluation excluded) until the test
  accuracy first reached 97% and 99%, against the coursework's 420 s.
"""

from __future__ import annotations

import itertools
import statistics
import time

import numpy as np
import pytest

from fastlenet.config import TrainConfig

from .lenet import (ACCURACY_TARGETS, BATCH, COURSEWORK_TARGET_S, MODEL, MODELS, RECIPE_KEYS,
                    fastlenet_recipe, make_run, time_to_accuracy, torch_recipe)
from .ops import CHECKED_AGAINST, RTOL, assert_close
from .torch_contenders import TORCH_CONTENDERS, TORCH_CUDA_GRAPHS

WARMUP_STEPS = 20
# A whole step's gradients are checked to this fraction of the largest reference value:
# the kernels' RTOL, but wider for models with BatchNorm, where an input of a ReLU within
# rounding of 0 falls on either side in different contenders and BatchNorm's backward
# spreads that one value's gradient over its whole channel (PyTorch and the NumPy backend
# differed by 0.2% of the largest conv gradient of compact at batch 128)
STEP_RTOL = {"compact": 5e-3}


def group(kind: str, model: str) -> str:
    """The benchmark group of a step or epoch (``kind``) of ``model``."""
    return kind if model == MODEL else f"{kind} {model}"


@pytest.mark.parametrize("model", MODELS)
def test_training_step(benchmark, contender, model, training_set, pytestconfig):
    x, y = training_set
    order = np.random.default_rng(1).permutation(len(y))
    first = order[:BATCH]
    checked, reference = (make_run(name, x, y, model=model, dropout=False)
                          for name in (contender, CHECKED_AGAINST))
    start = time.perf_counter()
    loss = checked.step(checked.index(first))
    checked.synchronize()
    first_call = time.perf_counter() - start
    want = reference.value(reference.step(reference.index(first)))
    assert checked.value(loss) == pytest.approx(want, rel=1e-4), \
        "loss differs from the NumPy backend's"
    grads, want_grads = checked.gradients(), reference.gradients()
    assert_close([grads[k] for k in want_grads], list(want_grads.values()),
                 f"{contender} {model} step", rtol=STEP_RTOL.get(model, RTOL))
    run = make_run(contender, x, y, model=model)

    device_order = run.index(order)
    rounds = itertools.count(1)

    def step():  # every round a new batch, as in training
        start = (next(rounds) * BATCH) % (len(y) - BATCH + 1)
        loss = run.step(device_order[start:start + BATCH])
        run.synchronize()
        return loss

    benchmark.group = group("training step", model)
    info = benchmark.extra_info
    info.update(model=model, images=BATCH, first_call_s=first_call)
    benchmark.pedantic(step, rounds=pytestconfig.getoption("--step-rounds"),
                       warmup_rounds=WARMUP_STEPS)
    if benchmark.stats:
        info["median_s"] = median = benchmark.stats.stats.median
        info["images_per_second"] = BATCH / median


@pytest.mark.long
@pytest.mark.parametrize("model", MODELS)
def test_epoch(benchmark, contender, model, contenders, training_set, pytestconfig):
    x, y = training_set
    run = make_run(contender, x, y, model=model)
    partners = {name: make_run(name, x, y, model=model) for name in contenders
                if name in TORCH_CONTENDERS and name != contender}
    for warm in (run, *partners.values()):  # compile, first-touch allocations, caches
        warm.epoch(steps=WARMUP_STEPS)
    partner_seconds = {name: [] for name in partners}

    def partner_epochs():
        for name, partner in partners.items():
            start = time.perf_counter()
            partner.epoch()
            partner_seconds[name].append(time.perf_counter() - start)

    benchmark.group = group("epoch", model)
    info = benchmark.extra_info
    info.update(model=model, images=len(y))
    benchmark.pedantic(run.epoch, setup=partner_epochs, rounds=pytestconfig.getoption("--epoch-rounds"))
    if benchmark.stats:
        seconds = benchmark.stats.stats.data
        info["median_s"] = median = statistics.median(seconds)
        info["images_per_second"] = len(y) / median
        for name, theirs in partner_seconds.items():
            info[f"{name}_epoch_s"] = theirs
            info[f"ratio_to_{name}"] = median / statistics.median(theirs)
            info[f"ratio_to_{name}_per_round"] = [a / b for a, b in zip(seconds, theirs)]


@pytest.mark.long
def test_time_to_accuracy(benchmark, contender, pytestconfig, tmp_path):
    seed = pytestconfig.getoption("--accuracy-seed")
    if contender == TORCH_CUDA_GRAPHS:
        pytest.skip("the PyTorch recipe runs eagerly; torch-cuda-graphs is timed per step "
                    "and per epoch")
    if contender in TORCH_CONTENDERS:
        def train():
            return torch_recipe(seed, device=TORCH_CONTENDERS[contender][0])
    else:
        def train():
            return fastlenet_recipe(contender, seed, tmp_path / "run")

    benchmark.group = "time to accuracy"
    epochs = benchmark.pedantic(train, rounds=1)
    info = benchmark.extra_info
    defaults = TrainConfig().validate()
    info.update(seed=seed, recipe={key: getattr(defaults, key) for key in RECIPE_KEYS},
                coursework_target_s=COURSEWORK_TARGET_S,
                epochs=[{k: r[k] for k in ("epoch", "test_accuracy", "epoch_seconds", "train_seconds")}
                        for r in epochs])
    for target in ACCURACY_TARGETS:
        reached = time_to_accuracy(epochs, target)
        if reached is not None:
            reached["fraction_of_coursework_target"] = reached["seconds"] / COURSEWORK_TARGET_S
        info[f"to_{round(target * 100)}"] = reached
