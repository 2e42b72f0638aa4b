"""ONNX import (backends/onnx/importer.py): absnet's own Point() export reads back with the same outputs
and bounds; torch.onnx.export output (TorchScript exporter, ``dynamo=False``) of ordinary PyTorch
models imports at opsets 9, 11, 13 and 17; the emitted files compile and load; every unsupported
node is reported in one E503.
"""

from __future__ import annotations

import importlib.util
import io
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn

import absnet
from absnet import cli
from absnet.backends.onnx.importer import UNBOUNDED, import_onnx
from absnet.diagnostics import AbsnetError
from absnet.train.checkpoint import load_weights

ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("onnx_export_cases", ROOT / "tests" / "backends" / "onnx" /
                                               "test_onnx_export.py")
EXPORT = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(EXPORT)  # type: ignore[union-attr]
ZOO = EXPORT.ZOO
EPS = 0.02
OPSETS = (9, 11, 13, 17)
pytestmark = pytest.mark.usefixtures("one_thread_module")


def close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    EXPORT.close(got.detach().numpy(), want, what)


# --------------------------------------------------------------------------- round trip of the zoo


def check_round_trip(name: str, domains: tuple[str, ...] = ("Box()", "CROWN()")) -> None:
    """Point() export → import: same outputs, same bounds, same input shape and range."""
    net = EXPORT.network(name)
    back = absnet.compile_onnx(absnet.export_onnx(net, domain="Point()"))
    assert back.input_shape == net.input_shape and back.input_range == net.input_range
    x = EXPORT.inputs(name, 3)
    with torch.no_grad():
        close(back(x), net(x), f"{name} outputs")
        for domain in domains:
            (lo, hi), (lo2, hi2) = net.bounds(x, EPS, domain=domain), back.bounds(x, EPS, domain=domain)
            close(lo2, lo, f"{name} {domain} lower")
            close(hi2, hi, f"{name} {domain} upper")


ZOO_DEFAULT = ["FFNN", "ConvSmall", "ResNetWong"]  # flat, conv, Add branches (CNN7's BatchNorm: below)
ZOO_REST = [n for _, n in ZOO.CASES if n not in ZOO.HEAVY and n not in ZOO_DEFAULT]


@pytest.mark.parametrize("name", ZOO_DEFAULT)
def test_zoo_round_trip_keeps_outputs_and_bounds(name: str) -> None:
    check_round_trip(name)


def test_batchnorm_zoo_model_round_trip_keeps_box_bounds() -> None:
    check_round_trip("CNN7", ("Box()", "HBox()"))  # CROWN(): in the slow test (25 s)


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_REST)
def test_whole_zoo_round_trip_keeps_outputs_and_bounds(name: str) -> None:
    """CROWN() where the zoo test runs it (at most LINEAR_LIMIT nonlinear inputs), else CROWN_IBP()."""
    net = EXPORT.network(name)
    nonlinear = sum(math.prod(n.meta["in_shapes"][0]) for n in net.graph.nodes() if n.op in ZOO.NONLINEAR)
    check_round_trip(name, ("Box()", "CROWN()" if nonlinear <= ZOO.LINEAR_LIMIT else "CROWN_IBP()"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO.HEAVY))
def test_heavy_zoo_round_trip_keeps_outputs_and_box_bounds(name: str) -> None:
    """DenseNet100's Concat branches, the ResNets' AvgPool2d (exported as a depthwise Conv)."""
    check_round_trip(name, ("Box()",))


def test_round_trip_folds_batchnorm_into_convs_and_keeps_branches() -> None:
    net = EXPORT.network("ResNetWong")
    source = import_onnx(absnet.export_onnx(net, domain="Point()")).source
    assert source.count("Add {") == sum(n.op == "Add" for n in net.graph.nodes())
    assert source.count("Conv2d(") == sum(n.op == "Conv2d" for n in net.graph.nodes())
    assert "Normalize(mean=[0.1307], std=[0.3081])" in source


# --------------------------------------------------------------------------- torch.onnx.export models


class Normalized(nn.Module):
    """(x − mean) / std inside the graph, then ``body``; ``flat`` uses a Shape/Gather/Concat reshape."""

    def __init__(self, mean: list[float], std: list[float], body: nn.Module):
        super().__init__()
        shape = (1, len(mean), 1, 1) if len(mean) > 1 else ()
        self.register_buffer("mean", torch.tensor(mean).reshape(shape))
        self.register_buffer("std", torch.tensor(std).reshape(shape))
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std)


class Flat(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1)  # exported as Shape → Gather → Unsqueeze → Concat → Reshape


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Conv2d(8, 8, 3, padding=1))
        self.down, self.short = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.Conv2d(8, 16, 1, stride=2)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        x = torch.relu(self.down(x) + self.short(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))  # GlobalAveragePool


def torch_model(kind: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if kind == "mlp":
        body = nn.Sequential(nn.Flatten(), nn.Linear(64, 20), nn.BatchNorm1d(20), nn.ReLU(), nn.Dropout(0.2),
                             nn.Linear(20, 20), nn.Tanh(), nn.Linear(20, 10))
        model, shape = Normalized([0.13], [0.31], body), (1, 8, 8)
    elif kind == "cnn":
        body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 16, 3, stride=1), nn.LeakyReLU(0.1), nn.AvgPool2d(2), Flat(),
                             nn.Linear(16 * 2 * 2, 20), nn.Sigmoid(), nn.Linear(20, 10))
        model, shape = Normalized([0.49, 0.48, 0.45], [0.25, 0.24, 0.26], body), (3, 12, 12)
    else:
        model, shape = Normalized([0.49, 0.48, 0.45], [0.25, 0.24, 0.26], Residual()), (3, 8, 8)
    with torch.no_grad():  # BatchNorm with non-trivial statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
    return model.eval(), shape


def onnx_of(model: nn.Module, shape: tuple[int, ...], opset: int, dynamic: bool = True,
            fold: bool = True) -> onnx.ModelProto:
    """torch.onnx.export with the TorchScript exporter (``dynamo=False``), batch axis symbolic; ``fold``:
    the exporter's constant folding (which also folds BatchNorm2d into the conv before it)."""
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(1, *shape),), f, opset_version=opset, dynamo=False,
                          do_constant_folding=fold, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}} if dynamic else None)
    return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("kind", ["mlp", "cnn", "residual"])
def test_torch_exported_models_import_with_the_same_outputs(kind: str, opset: int) -> None:
    model, shape = torch_model(kind)
    net = absnet.compile_onnx(onnx_of(model, shape, opset))
    assert net.input_shape == shape and net.input_range == UNBOUNDED
    x = torch.rand((3, *shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        close(net(x), model(x), f"{kind} opset {opset}")
        lo, hi = net.bounds(x, EPS, domain="Box()")  # the bounds hold the concrete outputs nearby
        y = model(x + EPS * (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) - 1))
    assert (lo <= y + 1e-5).all() and (y <= hi + 1e-5).all()


@pytest.mark.parametrize("kind", ["cnn", "residual"])
def test_a_fixed_batch_of_one_imports_and_runs_at_any_batch(kind: str) -> None:
    model, shape = torch_model(kind)
    proto = onnx_of(model, shape, 13, dynamic=False)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    net = absnet.compile_onnx(proto)
    x = torch.rand(4, *shape)
    with torch.no_grad():
        close(net(x), model(x), f"{kind} exported with batch 1")


@pytest.mark.parametrize("opset", [9, 17])
def test_unfolded_batchnorm_imports_as_batchnorm2d(opset: int) -> None:
    model, shape = torch_model("residual")
    proto = onnx_of(model, shape, opset, fold=False)
    assert any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    imp = import_onnx(proto)
    assert imp.source.count("BatchNorm2d(") == 2
    x = torch.rand(3, *shape)
    with torch.no_grad():
        close(imp.net(x), model(x), f"unfolded BatchNorm opset {opset}")


def test_torch_normalisation_becomes_normalize_and_branches_add() -> None:
    model, shape = torch_model("residual")
    source = import_onnx(onnx_of(model, shape, 13), input_range=(0.0, 1.0)).source
    assert "range [0.0, 1.0]" in source
    assert "Normalize(mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26])" in source
    assert source.count("Add {") == 2 and "branch { }" in source and "AdaptiveAvgPool2d(1)" in source


class Folds(nn.Module):
    """Pad before a Conv, a scale/shift after a Conv, and a TF-style NHWC flatten before a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.lin = nn.Conv2d(2, 4, 3), nn.Linear(4 * 5 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(F.pad(x, (1, 1, 1, 1))) * 2.0 - 0.5)
        return self.lin(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1))


@pytest.mark.parametrize("opset", [11, 17])
def test_pad_scale_and_nhwc_flatten_fold_into_layers(opset: int) -> None:
    model = Folds().eval()
    imp = import_onnx(onnx_of(model, (2, 5, 5), opset))
    kinds = [ln.split("(")[0].strip() for ln in imp.source.splitlines()[3:-1]]
    assert kinds == ["Conv2d", "ReLU", "Flatten", "Linear"], imp.source
    assert "padding=1" in imp.source
    x = torch.rand(3, 2, 5, 5)
    with torch.no_grad():
        close(imp.net(x), model(x), f"folds opset {opset}")


# --------------------------------------------------------------------------- files and the command


def test_absc_import_writes_source_and_weights_that_compile(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model, shape = torch_model("cnn")
    onnx.save_model(onnx_of(model, shape, 17), str(tmp_path / "cnn.onnx"))
    code = cli.main(["import", str(tmp_path / "cnn.onnx"), "-o", str(tmp_path / "cnn.absnet"),
                     "--input-range", "0", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "wrote" in out and "cnn.safetensors" in out
    text = (tmp_path / "cnn.absnet").read_text()
    net = absnet.compile_source(text)
    assert net.input_range == (0.0, 1.0) and net.input_shape == shape
    load_weights(tmp_path / "cnn.safetensors", net)
    x = torch.rand(2, *shape)
    with torch.no_grad():
        close(net.eval()(x), model(x), "compiled from the written files")


def test_absc_import_of_a_bad_file_is_e503(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"\x00not an onnx model at all")
    assert cli.main(["import", str(tmp_path / "bad.onnx")]) == 1
    assert "error[E503]" in capsys.readouterr().err
    assert cli.main(["import", str(tmp_path / "missing.onnx")]) == 1
    assert "no such file" in capsys.readouterr().err


# --------------------------------------------------------------------------- unsupported graphs


def _graph(nodes: list, inits: list, in_shape: list, out_shape: list) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _const(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, shape, np.random.default_rng(0).random(shape).ravel())


def test_every_unsupported_node_is_listed_in_one_e503() -> None:
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1", transB=1),
             helper.make_node("Softmax", ["h"], ["s"], name="mid_softmax", axis=1),
             helper.make_node("Unsqueeze", ["s", "ax"], ["u"], name="unsq"),
             helper.make_node("LSTM", ["u", "W", "R"], ["seq"], name="lstm", hidden_size=4),
             helper.make_node("Flatten", ["seq"], ["f"], name="flat", axis=1),
             helper.make_node("Gemm", ["f", "w2"], ["y"], name="fc2", transB=1)]
    inits = [_const("w1", (6, 4)), _const("W", (1, 16, 6)), _const("R", (1, 16, 4)), _const("w2", (3, 4)),
             helper.make_tensor("ax", TensorProto.INT64, (1,), [0])]
    with pytest.raises(AbsnetError) as e:
        import_onnx(_graph(nodes, inits, ["N", 4], ["N", 3]))
    (d,) = e.value.diagnostics
    assert d.code == "E503" and "2 ONNX nodes" in d.message and d.help
    assert any("'mid_softmax' (Softmax)" in n for n in d.notes) and any("'lstm' (LSTM)" in n for n in d.notes)


@pytest.mark.parametrize(("node", "inits", "reason"), [
    (helper.make_node("Pad", ["x", "p"], ["y"], name="pad", mode="reflect"),
     [helper.make_tensor("p", TensorProto.INT64, (8,), [0, 0, 1, 1, 0, 0, 1, 1])], "zeros only"),
    (helper.make_node("Conv", ["x", "k"], ["y"], name="conv", pads=[1, 1, 0, 0]), [_const("k", (2, 2, 3, 3))],
     "asymmetric padding"),
    (helper.make_node("Transpose", ["x"], ["y"], name="tr", perm=[0, 2, 3, 1]), [], "no general transpose"),
    (helper.make_node("Mul", ["x", "c"], ["y"], name="mul"), [_const("c", (2, 4, 4))], "varies within a channel"),
])
def test_unimportable_settings_say_why(node: Any, inits: list, reason: str) -> None:
    shapes = {"pad": [1, 2, 6, 6], "conv": [1, 2, 3, 4], "tr": [1, 4, 4, 2], "mul": [1, 2, 4, 4]}
    with pytest.raises(AbsnetError) as e:
        import_onnx(_graph([node], inits, [1, 2, 4, 4], shapes[node.name]))
    (d,) = e.value.diagnostics
    assert d.code == "E503" and any(f"'{node.name}'" in n and reason in n for n in d.notes), d.notes


def test_an_import_that_disagrees_with_the_graph_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check against the graph's own output can fail: perturb one folded weight."""
    from absnet.backends.onnx import importer

    def wrong(*args: Any) -> Any:
        ops, end, problems = fold(*args)
        lin = next(o for o in ops if o.kind == "Linear")
        lin.params["weight"] = lin.params["weight"] * 1.01
        return ops, end, problems

    fold = importer.fold
    monkeypatch.setattr(importer, "fold", wrong)
    model, shape = torch_model("mlp")
    with pytest.raises(AbsnetError) as e:
        import_onnx(onnx_of(model, shape, 13))
    assert e.value.diagnostics[0].code == "E503" and "disagrees with the ONNX graph" in e.value.diagnostics[0].message


def test_matmul_on_a_vector_with_unit_axes_acas_xu_style() -> None:
    """Input [N, 1, 1, 5], MatMul + Add along the last axis (as in VNN-COMP's ACAS Xu files)."""
    rng = np.random.default_rng(3)
    w1, b1, w2, b2 = rng.normal(size=(5, 7)), rng.normal(size=7), rng.normal(size=(7, 3)), rng.normal(size=3)
    t = {k: helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.ravel()) for k, v in
         {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "mean": np.full((1,), 0.5), "scale": np.full((1,), 2.0)}.items()}
    nodes = [helper.make_node("Sub", ["x", "mean"], ["n0"]), helper.make_node("Mul", ["n0", "scale"], ["n1"]),
             helper.make_node("MatMul", ["n1", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
             helper.make_node("Add", ["b2", "h3"], ["y"])]
    imp = import_onnx(_graph(nodes, list(t.values()), ["N", 1, 1, 5], ["N", 1, 1, 3]), input_range=(-1.0, 1.0))
    assert imp.net.input_shape == (1, 1, 5) and imp.net.output_shape == (1, 1, 3)
    x = torch.rand(4, 1, 1, 5) * 2 - 1
    h = np.maximum(((x.numpy().astype(np.float64) - 0.5) * 2.0) @ w1 + b1, 0)
    with torch.no_grad():
        close(imp.net(x), torch.from_numpy(h @ w2 + b2), "ACAS Xu style")
        lo, hi = imp.net.bounds(x, 0.05, domain="CROWN()")
    assert (lo <= imp.net(x) + 1e-5).all() and (imp.net(x) <= hi + 1e-5).all()


def test_point_export_writes_native_activations_and_pools_that_import_back(one_thread: None) -> None:
    """The concrete export writes Sigmoid, Tanh, Softplus, LeakyRelu, Elu, MaxPool, AveragePool and
    GlobalAveragePool as single ONNX operators (the form verifiers read), and they import back."""
    src = """network Acts {
      input [2, 8, 8] range [0, 1]
      Conv2d(4, kernel=3, padding=1) Sigmoid() MaxPool2d(2)
      Conv2d(4, kernel=3, padding=1) Tanh() AvgPool2d(2, padding=1)
      Conv2d(6, kernel=1) LeakyReLU(negative_slope=0.2) AdaptiveAvgPool2d(output_size=1)
      Flatten() Linear(8) ELU(alpha=0.5) Linear(6) Softplus() Linear(3)
    }"""
    net = absnet.compile_source(src, seed=0).eval()
    model = absnet.export_onnx(net, domain="Point()")
    ops = {n.op_type for n in model.graph.node}
    assert {"Sigmoid", "Tanh", "Softplus", "LeakyRelu", "Elu", "MaxPool", "AveragePool", "GlobalAveragePool"} <= ops
    assert not ops & {"Exp", "Log", "Slice", "Max"}
    back = absnet.compile_onnx(model)
    x = torch.rand(4, *net.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = net(x), back(x)
    assert float((got - want).abs().max()) <= 1e-5 * max(1.0, float(want.abs().max()))
