"""The signature of a recorded training step: every host value it bakes in.

A backend that records a step (``Backend.capture_step``) replays the recording only while
the signature stays the same; what changes from step to step is read from device arrays.
"""

from __future__ import annotations


def step_signature(model, loss_fn, optimizer) -> tuple:
    """The host values a recorded step of ``model``, ``loss_fn`` and ``optimizer`` bakes in."""
    return optimizer_settings(optimizer), loss_fn.label_smoothing, layer_settings(model)


def optimizer_settings(optimizer) -> tuple:
    """What an optimizer's update bakes in: its kind, its hyper-parameters but the
    learning rate (read from the device with the other per-step scalars), and the slices
    of the flat arrays it updates this step."""
    hyper = optimizer.hyper_parameters()
    return (optimizer.kind, *(v for k, v in hyper.items() if k != "lr"), optimizer.segments)


def layer_settings(layer) -> tuple:
    """Every plain value (bool, int, float, str) a layer holds, and, for a Sequential
    (a model too), those of every layer inside it, nested ones included: train or eval
    mode, dropout rates, BatchNorm's momentum and eps, strides... Taking them all, rather
    than a list each layer declares, keeps a new layer's option from being baked into a
    recorded step unnoticed."""
    own = tuple(sorted((k, v) for k, v in vars(layer).items() if type(v) in (bool, int, float, str)))
    inner = tuple(layer_settings(child) for child in getattr(layer, "layers", ()))
    return type(layer).__name__, own, inner
