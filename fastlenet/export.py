"""Take a trained model elsewhere: an ONNX file, or plain weights with PyTorch's names.

``fastlenet export RUN/best.npz -o model.onnx`` (or ``-o weights.npz``) calls
:func:`export_checkpoint`; the library functions take any :class:`~fastlenet.nn.Model`
built from the layers of :mod:`fastlenet.nn`.

ONNX (the ``onnx`` extra): opset 13, IR version 7, so runtimes of recent years load it.
Input ``images`` (N, C, H, W) float32, normalised as in training, N dynamic; output
``logits`` (N, K). The graph is the model in eval mode: BatchNorm uses its running
statistics and Dropout is left out. The preparation of an image stays outside the graph
and is written into the file's metadata (``mean``, ``std``, ``preprocessing``,
``class_names``), so the graph's input is exactly fastlenet's and its logits can be
compared value for value. Weights go in as float32 (a float64 model is rounded).

Plain weights: an ``.npz`` holding only arrays, keyed by PyTorch's ``state_dict`` names
for the ``torch.nn.Sequential`` that :func:`torch_source` writes out (fastlenet names a
model's parameters as PyTorch names a Sequential's: ``"0.weight"``, ``"3.bias"``,
``"1.running_mean"``). PyTorch's BatchNorm also has ``num_batches_tracked``, which only
matters with ``momentum=None``; it is not written and ``load_state_dict`` fills it in.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .version import __version__
from .atomic_write import write_file
from .errors import ConfigError, FastLeNetError
from .nn import (AvgPool2d, BatchNorm, Conv2d, Dropout, Flatten, Layer, Linear, MaxPool2d, Model,
                 ReLU, ReLUMaxPool2d, Sequential, Sigmoid, Tanh)
from .output_path import output_beside
from .trained_model import load_trained_model

OPSET = 13
IR_VERSION = 7  # the IR version that came with opset 13
FORMATS = ("onnx", "npz")


@dataclass
class Step:
    """One layer of a model in order, nested Sequentials opened up.

    name: its parameters' prefix (``"3"``, or ``"2.0"`` inside a nested Sequential);
    in_shape, out_shape: per sample, without the batch axis.
    """

    name: str
    layer: Layer
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


_EXPORTABLE = (Conv2d, MaxPool2d, AvgPool2d, ReLUMaxPool2d, Linear, ReLU, Tanh, Sigmoid, Flatten,
               Dropout, BatchNorm)


def steps(model: Model) -> list[Step]:
    """The model's layers in order with their names and shapes.

    ConfigError for a layer that is not one of fastlenet.nn's (a subclass may compute
    anything, so only the classes themselves are known to export).
    """
    found: list[Step] = []

    def walk(layers, prefix: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        for i, layer in enumerate(layers):
            name = f"{prefix}{i}"
            if isinstance(layer, Sequential):
                shape = walk(layer.layers, name + ".", shape)
                continue
            if type(layer) not in _EXPORTABLE:
                raise ConfigError(f"layer {name} ({type(layer).__name__}) cannot be exported: "
                                  f"only {', '.join(k.__name__ for k in _EXPORTABLE)} and "
                                  "Sequential are known")
            out = tuple(layer.output_shape(shape))
            found.append(Step(name, layer, shape, out))
            shape = out
        return shape

    walk(model.layers, "", tuple(model.input_shape))
    return found


# ------------------------------------------------------------------ PyTorch
def torch_state_dict(model: Model) -> dict[str, np.ndarray]:
    """Host copies of every parameter and buffer, keyed as PyTorch keys the state dict of
    the ``torch.nn.Sequential`` from :func:`torch_source`."""
    return model.state_dict()


def torch_source(model: Model) -> str:
    """A Python expression building the model as a ``torch.nn.Sequential`` (with ``torch``
    imported), whose state dict has the names and shapes of :func:`torch_state_dict`."""

    def module(layer: Layer, in_shape) -> str:
        if isinstance(layer, Sequential):
            shapes = [tuple(in_shape)] + layer.output_shapes(in_shape)
            return "torch.nn.Sequential(" + ", ".join(
                module(inner, shape) for inner, shape in zip(layer.layers, shapes)) + ")"
        kind = type(layer)
        if kind is Conv2d:
            options = "".join(f", {k}={v}" for k, v, default in (
                ("stride", layer.stride, 1), ("padding", layer.padding, 0),
                ("bias", layer.has_bias, True)) if v != default)
            return (f"torch.nn.Conv2d({layer.in_channels}, {layer.out_channels}, "
                    f"{layer.kernel_size}{options})")
        if kind in (MaxPool2d, AvgPool2d, ReLUMaxPool2d):
            stride = "" if layer.stride == layer.size else f", stride={layer.stride}"
            if kind is ReLUMaxPool2d:  # a Sequential of two keeps the indices of the rest
                return f"torch.nn.Sequential(torch.nn.ReLU(), torch.nn.MaxPool2d({layer.size}{stride}))"
            return f"torch.nn.{kind.__name__}({layer.size}{stride})"
        if kind is Linear:
            bias = "" if layer.has_bias else ", bias=False"
            return f"torch.nn.Linear({layer.in_features}, {layer.out_features}{bias})"
        if kind is BatchNorm:
            dims = "2d" if len(in_shape) == 3 else "1d"
            return (f"torch.nn.BatchNorm{dims}({layer.num_features}, eps={layer.eps!r}, "
                    f"momentum={layer.momentum!r})")
        if kind is Dropout:
            return f"torch.nn.Dropout({layer.p!r})"
        return f"torch.nn.{kind.__name__}()"  # ReLU, Tanh, Sigmoid, Flatten

    steps(model)  # refuses layers it does not know, with the layer's name
    return module(model, model.input_shape)


# ------------------------------------------------------------------ ONNX
def _onnx():
    try:
        import onnx
    except ImportError as exc:
        raise FastLeNetError(f"ONNX export needs the onnx package ({exc}): "
                             "pip install 'fastlenet[onnx]'") from None
    return onnx


def preprocessing_text(mean: float, std: float, pad: int) -> str:
    """How an image is made into the model's input, for the ONNX metadata."""
    return (f"a 28x28 grey image of one digit, white ink on black, values v in 0..255 "
            f"(MNIST's convention); x = (v / 255 - {mean!r}) / {std!r}; padded by {pad} "
            f"pixels on every side with the value of a 0 pixel, {(0 - mean) / std!r}; "
            "fastlenet.imageprep turns a photo of a digit into such an image")


def to_onnx(model: Model, *, mean: float | None = None, std: float | None = None,
            class_names: list[str] | None = None, dataset: str | None = None):
    """The model in eval mode as an ``onnx.ModelProto``, checked by ``onnx.checker``.

    mean, std, class_names, dataset: how the training data was prepared and what the
    classes are, stored as metadata (JSON values under those keys) when given.
    """
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    state = model.state_dict()
    nodes, initializers = [], []

    def weight(key: str) -> str:
        initializers.append(numpy_helper.from_array(state[key].astype(np.float32), key))
        return key

    current = "images"
    for step in steps(model):
        layer, kind, name = step.layer, type(step.layer), step.name
        if kind is Dropout:  # the identity in eval mode
            continue
        out = f"{name}.out"
        if kind is Conv2d:
            inputs = [current, weight(f"{name}.weight")]
            if layer.has_bias:
                inputs.append(weight(f"{name}.bias"))
            k, p, s = layer.kernel_size, layer.padding, layer.stride
            nodes.append(helper.make_node("Conv", inputs, [out], name=name, kernel_shape=[k, k],
                                          strides=[s, s], pads=[p, p, p, p]))
        elif kind in (MaxPool2d, AvgPool2d, ReLUMaxPool2d):
            if kind is ReLUMaxPool2d:
                nodes.append(helper.make_node("Relu", [current], [f"{name}.relu"], name=f"{name}.relu"))
                current = f"{name}.relu"
            op = "AveragePool" if kind is AvgPool2d else "MaxPool"
            nodes.append(helper.make_node(op, [current], [out], name=name,
                                          kernel_shape=[layer.size] * 2, strides=[layer.stride] * 2))
        elif kind is Linear:
            # Gemm: y = x @ W.T + b, W in PyTorch's (OUT, IN)
            inputs = [current, weight(f"{name}.weight")]
            if layer.has_bias:
                inputs.append(weight(f"{name}.bias"))
            nodes.append(helper.make_node("Gemm", inputs, [out], name=name, transB=1))
        elif kind is BatchNorm:
            inputs = [current] + [weight(f"{name}.{key}") for key in
                                  ("weight", "bias", "running_mean", "running_var")]
            nodes.append(helper.make_node("BatchNormalization", inputs, [out], name=name,
                                          epsilon=layer.eps))
        elif kind is Flatten:
            nodes.append(helper.make_node("Flatten", [current], [out], name=name, axis=1))
        else:  # ReLU, Tanh, Sigmoid
            op = {ReLU: "Relu", Tanh: "Tanh", Sigmoid: "Sigmoid"}[kind]
            nodes.append(helper.make_node(op, [current], [out], name=name))
        current = out
    nodes.append(helper.make_node("Identity", [current], ["logits"], name="logits"))

    graph = helper.make_graph(
        nodes, f"fastlenet-{model.name}",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", *model.input_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", model.num_classes])],
        initializer=initializers)
    graph.input[0].doc_string = "images normalised as the metadata's 'preprocessing' says"
    graph.output[0].doc_string = "class scores; softmax gives the probabilities"
    proto = helper.make_model(graph, producer_name="fastlenet", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = IR_VERSION
    proto.doc_string = (f"fastlenet model '{model.name}' ({model.num_parameters():,} parameters), "
                        "eval mode; input (N, C, H, W) float32, output logits (N, K)")
    metadata = {"model": model.name}
    if mean is not None and std is not None:
        pad = max(0, (model.input_shape[-1] - 28) // 2)  # MNIST's 28x28 -> the input's size
        metadata.update(mean=mean, std=std, preprocessing=preprocessing_text(mean, std, pad))
    if class_names is not None:
        metadata["class_names"] = list(class_names)
    if dataset is not None:
        metadata["dataset"] = dataset
    helper.set_model_props(proto, {k: v if isinstance(v, str) else json.dumps(v)
                                   for k, v in metadata.items()})
    onnx.checker.check_model(proto, full_check=True)
    return proto


# ------------------------------------------------------------------ files
SUFFIXES = {"onnx": ".onnx", "npz": ".npz"}  # format -> the file name's ending


def resolve_format(fmt: str | None, out: str | os.PathLike | None) -> str:
    """The export format: ``fmt``, else the one ``out``'s suffix names, else "onnx" (no
    ``out``). ConfigError (one line) for an unknown format, or an ``out`` whose suffix is
    not the format's, so that a file's name never lies about what it holds."""
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if out is None:
        return fmt or "onnx"
    suffix = Path(out).suffix.lower()
    named = next((f for f, s in SUFFIXES.items() if s == suffix), None)
    if fmt is None and named is None:
        raise ConfigError(f"cannot tell the export format from -o {out}: name the file .onnx "
                          "(ONNX) or .npz (PyTorch weights), or give --format")
    if fmt is not None and named != fmt:
        raise ConfigError(f"--format {fmt} writes a {SUFFIXES[fmt]} file, but -o {out} does not "
                          f"end in {SUFFIXES[fmt]}; rename it, or drop --format")
    return fmt or named


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike | None = None,
                      fmt: str | None = None) -> tuple[Path, Model, dict]:
    """Export a checkpoint (or a run folder: its best.npz) as ONNX or PyTorch-named weights.

    fmt: "onnx" or "npz", or None for :func:`resolve_format`'s choice.
    out: by default beside the checkpoint: RUN/best.npz -> RUN/best.onnx or RUN/best-torch.npz.
    Returns ``(path written, model, checkpoint meta)``.
    """
    fmt = resolve_format(fmt, out)
    if fmt == "onnx":
        _onnx()  # before loading anything: say at once what is missing
    model, meta = load_trained_model(checkpoint, backend="numpy")
    out = output_beside(checkpoint, out, ".onnx" if fmt == "onnx" else "-torch.npz")
    if fmt == "onnx":
        proto = to_onnx(model, mean=meta["mean"], std=meta["std"],
                        class_names=meta.get("class_names"), dataset=meta.get("dataset"))
        write_file(out, proto.SerializeToString(), option="-o")
    else:
        buffer = io.BytesIO()
        np.savez(buffer, **torch_state_dict(model))
        write_file(out, buffer.getvalue(), option="-o")
    return out, model, meta


__all__ = ["FORMATS", "OPSET", "Step", "steps", "torch_state_dict", "torch_source", "to_onnx",
           "export_checkpoint", "resolve_format", "preprocessing_text"]
