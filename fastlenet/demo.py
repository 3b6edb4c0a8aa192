"""``fastlenet demo``: one self-contained HTML page to draw a digit and watch the model read it.

The page (template and script in ``fastlenet/static/``) needs no server and no network:
the model's layers and weights are embedded in it as JSON with base64 float32 arrays,
and its script does by hand in JavaScript what fastlenet does in Python:

1. the drawing (a 280x280 canvas, white ink on black) becomes a 28x28 MNIST-style
   digit by the steps of ``fastlenet predict`` (:mod:`fastlenet.imageprep`: paper
   level, ink polarity, ink stretch, crop, Lanczos fit into 20x20 as Pillow computes
   it, centre of mass at (14, 14)), whose constants are passed in from that module;
2. the digit is normalised and padded as :func:`fastlenet.data.preprocess` does;
3. the model's forward pass in eval mode, layer by layer, gives the class
   probabilities and the maps after every convolution and pooling layer (the layers
   :func:`fastlenet.report.feature_maps` shows).

``window.fastlenetDemo`` exposes the page's last result (digit, input, probabilities)
to scripts; the browser test compares it with fastlenet's own forward pass.
"""

from __future__ import annotations

import base64
import json
import os
from importlib import resources
from pathlib import Path

import numpy as np

from . import imageprep
from .atomic_write import write_file
from .errors import ConfigError
from .export import steps
from .nn import (AvgPool2d, BatchNorm, Conv2d, Dropout, Flatten, Linear, MaxPool2d, Model, ReLU,
                 ReLUMaxPool2d, Sigmoid, Tanh)
from .output_path import output_beside
from .trained_model import load_trained_model

# layer class -> the name demo.js's forward pass knows it by
_KINDS = {Conv2d: "conv2d", MaxPool2d: "maxpool2d", AvgPool2d: "avgpool2d",
          ReLUMaxPool2d: "relumaxpool2d", Linear: "linear", BatchNorm: "batchnorm",
          Flatten: "flatten", Dropout: "dropout", ReLU: "relu", Tanh: "tanh", Sigmoid: "sigmoid"}


def _b64(array) -> str:
    """float32, little-endian, base64: what the page's Float32Array reads."""
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def _pad(model: Model) -> int:
    """Pixels of padding around a 28x28 digit that make the model's input."""
    c, h, w = model.input_shape
    pad = (h - imageprep.FIELD) // 2
    if c != 1 or h != w or pad < 0 or h != imageprep.FIELD + 2 * pad:
        raise ConfigError(f"the demo draws 28x28 digits; model '{model.name}' takes input of "
                          f"shape {model.input_shape}, not one channel of 28x28 padded evenly")
    return pad


def page_model(model: Model, meta: dict) -> dict:
    """What the page's script reads: the layers with their weights, the normalisation,
    the class names and imageprep's constants."""
    state = model.state_dict()
    layers = []
    for step in steps(model):
        layer = step.layer
        entry = {"kind": _KINDS[type(layer)], "label": f"layer {step.name}: {layer!r}",
                 "in_shape": list(step.in_shape), "out_shape": list(step.out_shape)}
        if isinstance(layer, (Conv2d, Linear)):
            entry["weight"] = _b64(state[f"{step.name}.weight"])
            entry["bias"] = _b64(state[f"{step.name}.bias"]) if layer.has_bias else None
        if isinstance(layer, Conv2d):
            entry.update(kernel=layer.kernel_size, stride=layer.stride, padding=layer.padding)
        elif isinstance(layer, (MaxPool2d, AvgPool2d, ReLUMaxPool2d)):
            entry.update(size=layer.size, stride=layer.stride)
        elif isinstance(layer, BatchNorm):
            entry.update({key: _b64(state[f"{step.name}.{key}"]) for key in
                          ("weight", "bias", "running_mean", "running_var")}, eps=layer.eps)
        layers.append(entry)
    names = [str(n) for n in meta.get("class_names") or range(model.num_classes)]
    history = meta.get("history", {}).get("epochs") or [{}]
    return {
        "name": model.name, "parameters": model.num_parameters(), "dataset": meta.get("dataset"),
        "test_accuracy": history[-1].get("test_accuracy"), "epochs": meta.get("epoch"),
        "mean": float(meta["mean"]), "std": float(meta["std"]), "pad": _pad(model),
        "input_shape": list(model.input_shape), "class_names": names, "layers": layers,
        "imageprep": {key: getattr(imageprep, key) for key in (
            "FIELD", "BOX", "NOISE_SIGMAS", "MIN_CONTRAST", "INK_FRACTION", "SPECK_SHARE")},
    }


def _static(name: str) -> str:
    return resources.files("fastlenet").joinpath("static", name).read_text(encoding="utf-8")


def render_page(model: Model, meta: dict) -> str:
    """The whole page as one HTML string: template, style, script and model inlined."""
    model_json = json.dumps(page_model(model, meta), separators=(",", ":"))
    page = _static("demo.html")
    for marker, text in (("/*STYLE*/", _static("demo.css")), ("/*SCRIPT*/", _static("demo.js")),
                         # "</" would end the <script> element the JSON sits in
                         ("/*MODEL*/", model_json.replace("</", "<\\/")),
                         ("{{TITLE}}", f"fastlenet: draw a digit for {model.name}")):
        page = page.replace(marker, text)
    return page


def write_demo(checkpoint: str | os.PathLike, out: str | os.PathLike | None = None
               ) -> tuple[Path, Model, dict]:
    """Write the page for a checkpoint (or a run folder: its best.npz); returns
    ``(path, model, meta)``."""
    model, meta = load_trained_model(checkpoint, backend="numpy")
    out = output_beside(checkpoint, out, "-demo.html")  # RUN/best.npz -> RUN/best-demo.html
    write_file(out, render_page(model, meta), option="-o")
    return out, model, meta


__all__ = ["page_model", "render_page", "write_demo"]
