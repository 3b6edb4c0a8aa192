"""``fastlenet export``: ONNX files run in onnxruntime, PyTorch-named weights load into
torch.nn, and every user error is one line.

ONNX logits must match fastlenet's to 1e-5 for every zoo model (trained briefly, so
BatchNorm's running statistics and the logits are those of a real run), for batches of
several sizes through one file (the batch axis is dynamic).
"""

import json
import sys

import numpy as np
import pytest

from fastlenet.checkpoint import load_model
from fastlenet.cli import main
from fastlenet.errors import ConfigError, FastLeNetError
from fastlenet.evaluation import load_test_set
from fastlenet.export import OPSET, steps, to_onnx, torch_source, torch_state_dict
from fastlenet.nn import MODELS, Conv2d, Flatten, Linear, Model, ReLU

from helpers import assert_one_line_error, custom_model


def logits_of(model, x):
    return np.concatenate([model.backend.to_numpy(z).T for _, z in model.batched_logits(x, 64)])


# ------------------------------------------------------------------ ONNX
def onnx_session(proto):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_logits_match_fastlenet_for_every_zoo_model(zoo_checkpoints, name, tmp_path, capsys):
    pytest.importorskip("onnx")
    out = tmp_path / f"{name}.onnx"
    assert main(["export", str(zoo_checkpoints[name]), "-o", str(out)]) == 0
    assert "input 'images' (N, 1, 32, 32) float32" in capsys.readouterr().out
    import onnx

    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    model, meta = load_model(zoo_checkpoints[name], backend="numpy")
    x, _, _ = load_test_set(meta)
    session = onnx_session(proto)
    for n in (1, 7, 64):  # one file, any batch size
        batch = x[:n]
        got = session.run(["logits"], {"images": batch})[0]
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got, logits_of(model, batch), rtol=0, atol=1e-5)
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["mean"]) == meta["mean"] and json.loads(props["std"]) == meta["std"]
    assert json.loads(props["class_names"]) == [str(c) for c in range(10)]
    assert props["model"] == name and "(v / 255 - " in props["preprocessing"]
    assert proto.opset_import[0].version == OPSET
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [1, 32, 32]


def test_onnx_export_of_a_custom_model_with_every_layer():
    pytest.importorskip("onnx")
    model = custom_model()
    x = np.random.default_rng(1).standard_normal((5, 1, 32, 32)).astype(np.float32)
    got = onnx_session(to_onnx(model)).run(None, {"images": x})[0]
    np.testing.assert_allclose(got, logits_of(model, x), rtol=0, atol=1e-5)
    kinds = [n.op_type for n in to_onnx(model).graph.node]
    assert kinds == ["Conv", "BatchNormalization", "Sigmoid", "AveragePool", "Conv", "Tanh",
                     "MaxPool", "Conv", "Relu", "MaxPool", "Flatten", "Gemm", "BatchNormalization",
                     "Relu", "Gemm", "Identity"]


def test_unknown_layers_are_refused_by_name():
    class Scaled(ReLU):  # a subclass may compute anything: not exported as a ReLU
        pass

    model = Model([Conv2d(1, 2, 5), Scaled(), Flatten(), Linear(2 * 28 * 28, 10)], name="odd",
                  backend="numpy")
    with pytest.raises(ConfigError, match="layer 1 \\(Scaled\\) cannot be exported"):
        steps(model)
    with pytest.raises(ConfigError, match="layer 1"):
        torch_source(model)


def test_missing_onnx_is_one_line(zoo_checkpoints, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    out = tmp_path / "m.onnx"
    assert main(["export", str(zoo_checkpoints["lenet5"]), "-o", str(out)]) == 2
    assert_one_line_error(capsys.readouterr().err, "pip install 'fastlenet[onnx]'")
    assert not out.exists()


# ------------------------------------------------------------------ PyTorch
def test_npz_holds_only_arrays_named_as_pytorch_names_them(zoo_checkpoints, tmp_path, capsys):
    out = tmp_path / "w.npz"
    assert main(["export", str(zoo_checkpoints["compact"]), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 5, bias=False)" in printed
    model, _ = load_model(zoo_checkpoints["compact"], backend="numpy")
    with np.load(out, allow_pickle=False) as archive:
        names = archive.files
        assert sorted(names) == sorted(model.state_dict())
        np.testing.assert_array_equal(archive["1.running_var"], model.state_dict()["1.running_var"])
    assert "1.weight" in names and "13.bias" in names  # BatchNorm gamma, the fc layer


@pytest.mark.torch
@pytest.mark.parametrize("name", list(MODELS))
def test_npz_loads_into_the_torch_lenet(zoo_checkpoints, name, tmp_path):
    torch = pytest.importorskip("torch")
    from benchmarks.torch_twins import torch_twin

    out = tmp_path / "w.npz"
    assert main(["export", str(zoo_checkpoints[name]), "--format", "npz", "-o", str(out)]) == 0
    model, meta = load_model(zoo_checkpoints[name], backend="numpy")
    x = load_test_set(meta)[0][:16]
    # the recipe of docs/cli.md (Export), into the test suite's own twin and into the printed definition
    for net in (torch_twin(name), eval(torch_source(model), {"torch": torch})):
        net.load_state_dict({k: torch.from_numpy(v) for k, v in np.load(out).items()})
        net.eval()
        with torch.no_grad():
            got = net(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, logits_of(model, x), rtol=0, atol=1e-5)


@pytest.mark.torch
def test_torch_source_of_a_custom_model_loads_its_weights():
    torch = pytest.importorskip("torch")
    model = custom_model()
    net = eval(torch_source(model), {"torch": torch})
    net.load_state_dict({k: torch.from_numpy(v) for k, v in torch_state_dict(model).items()})
    net.eval()
    x = np.random.default_rng(2).standard_normal((4, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(x)).numpy(), logits_of(model, x),
                                   rtol=0, atol=1e-5)


# ------------------------------------------------------------------ errors
def test_export_errors_are_one_line(zoo_checkpoints, tmp_path, capsys):
    checkpoint = zoo_checkpoints["lenet5"]
    assert main(["export", str(tmp_path / "missing.npz")]) == 2
    assert_one_line_error(capsys.readouterr().err, "no such checkpoint")

    data = dict(np.load(checkpoint))
    meta = json.loads(str(data["meta"]))
    meta["model"] = "vgg16"
    data["meta"] = np.array(json.dumps(meta))
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, **data)
    assert main(["export", str(foreign), "--format", "npz", "-o", str(tmp_path / "w.npz")]) == 2
    assert_one_line_error(capsys.readouterr().err, "unknown model 'vgg16'")

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["export", str(checkpoint), "--format", "npz", "-o", str(blocker / "w.npz")]) == 2
    assert_one_line_error(capsys.readouterr().err, "cannot write", "-o")

    assert main(["export", str(checkpoint), "-o", str(checkpoint)]) == 2
    assert_one_line_error(capsys.readouterr().err, "is the checkpoint itself")

    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(checkpoint), "--format", "tflite"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_default_outputs_sit_beside_the_checkpoint(zoo_checkpoints, capsys):
    pytest.importorskip("onnx")
    checkpoint = zoo_checkpoints["lenet5"]
    assert main(["export", str(checkpoint.parent)]) == 0  # a run folder: its best.npz
    assert (checkpoint.parent / "best.onnx").is_file()
    assert main(["export", str(checkpoint), "--format", "npz"]) == 0
    assert (checkpoint.parent / "best-torch.npz").is_file()
    assert isinstance(ConfigError("x"), FastLeNetError)


# ------------------------------------------------------------------ format and file name
@pytest.mark.parametrize("args, fragments", [
    (["--format", "onnx", "-o", "m.npz"], ["--format onnx", "m.npz", ".onnx"]),
    (["--format", "npz", "-o", "w.onnx"], ["--format npz", "w.onnx", ".npz"]),
    (["-o", "model.txt"], ["model.txt", ".onnx", ".npz", "--format"]),
    (["-o", "model"], ["model", ".onnx", ".npz"]),
])
def test_export_refuses_a_name_that_is_not_its_format(zoo_checkpoints, tmp_path, capsys, args,
                                                      fragments):
    args = [a if not a.startswith(("m.", "w.", "model")) else str(tmp_path / a) for a in args]
    assert main(["export", str(zoo_checkpoints["lenet5"]), *args]) == 2
    assert_one_line_error(capsys.readouterr().err, *fragments)
    assert list(tmp_path.iterdir()) == []


def test_export_takes_the_format_from_the_suffix(zoo_checkpoints, tmp_path, capsys):
    pytest.importorskip("onnx")
    checkpoint = str(zoo_checkpoints["lenet5"])
    assert main(["export", checkpoint, "-o", str(tmp_path / "m.onnx")]) == 0
    assert "ONNX" in capsys.readouterr().out
    assert (tmp_path / "m.onnx").read_bytes()[:2] != b"PK"  # not a zip (npz) archive
    assert main(["export", checkpoint, "-o", str(tmp_path / "w.npz")]) == 0
    assert "PyTorch" in capsys.readouterr().out
    assert (tmp_path / "w.npz").read_bytes()[:2] == b"PK"
    assert main(["export", checkpoint, "--format", "onnx", "-o", str(tmp_path / "x.ONNX")]) == 0


@pytest.mark.parametrize("fmt", ["npz", "onnx"])
def test_export_message_states_the_padding_value(zoo_checkpoints, tmp_path, capsys, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx")
    checkpoint = zoo_checkpoints["lenet5"]
    assert main(["export", str(checkpoint), "-o", str(tmp_path / f"m.{fmt}")]) == 0
    _, meta = load_model(checkpoint, backend="numpy")
    pad = -meta["mean"] / meta["std"]
    assert f"padded with {pad:.4g} (the value of a 0 pixel) to 32x32" in capsys.readouterr().out
