"""ONNX abstract analysis graphs equal the torch backend (DESIGN §6): every analysis, every op family,
two batch sizes (1 and 3) from ONE exported graph, in onnxruntime and (a subset) onnx.reference.

Tolerance: |onnx − torch| ≤ 1e-5·|torch| + 1e-5·max(1, max|torch|). Both sides run the same float32
program with different kernels (summation order, fused matmuls), so they differ by rounding. A sum of
n terms of mixed signs is off by about n·2⁻²⁴ times its *largest term*, not its result, and a bound
near 0 is such a cancelling sum: the absolute part therefore scales with the largest bound of the
output. The observed worst case over the zoo is 1.1e-6 relative to that scale.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

import absnet
from absnet import cli
from absnet.backends.onnx.export import export_onnx, run_onnx, session
from absnet.diagnostics import AbsnetError
from absnet.ir.domains import ANALYSES
from absnet.passes.estimate_cost import estimate

ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("zoo_cases", ROOT / "tests" / "models" / "test_zoo_soundness.py")
ZOO = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(ZOO)  # type: ignore[union-attr]
EXPORTABLE = [a for a in ANALYSES.values() if not a.alpha_iters and not a.proj]
EPS = 0.02

# Op families the zoo lacks (MaxPool2d, Sigmoid, Tanh, LeakyReLU, ELU, Softplus, AdaptiveAvgPool2d,
# Reshape, Dropout, active directives), and randomised directives.
SOURCE = """
network Mix {
  input [2, 8, 8] range [0, 1]
  Normalize(mean=[0.5, 0.4], std=[0.25, 0.3])
  Conv2d(4, kernel=3, padding=1)  BatchNorm2d()  ReLU()
  MaxPool2d(2)
  Concat(axis=1) {
    branch { }
    branch { Conv2d(2, kernel=3, padding=1)  Sigmoid() }
  }
  AvgPool2d(2, stride=1, padding=1)
  Add {
    branch { Tanh() }
    branch { LeakyReLU(negative_slope=0.1) }
  }
  AdaptiveAvgPool2d(output_size=(3, 3))
  CorrMaxK(5, only_train=false)
  Flatten()
  Dropout(p=0.3)
  Linear(12)  BatchNorm1d()  ELU()
  Reshape(shape=[3, 4])  Flatten()
  Linear(10)  Softplus()
  Linear(4)
}

network Dirs {
  input [1, 6, 6] range [0, 1]
  Conv2d(4, kernel=3)  ReLU()
  CorrMaxPool2D(2, only_train=false)
  CorrMaxPool3D(2, only_train=false)
  Conv2d(4, kernel=1)  ReLU()
  CorrFix(4, only_train=false)
  DecorrMin(6, only_train=false)
  DecorrMin(10, num_to_keep=true, only_train=false)
  Flatten()
  Linear(8)  ReLU()
  ToHZono(relu="NIPS")
  Concretize(only_train=false)
  ToZono(relu="Switch")
  Linear(8)  ReLU()
  ToLinear()
  Linear(8)  ReLU()
  Linear(3)
}

network Rand {
  input [1, 6, 6] range [0, 1]
  Conv2d(3, kernel=3)  ReLU()
  CorrRand(6, only_train=false)
  Flatten()
  Linear(8)  ReLU()
  DecorrRand(4, only_train=false)
  Linear(3)
}
"""


@functools.cache
def network(name: str) -> Any:
    """A small eval-mode network: a zoo model (the zoo test's instantiation) or one of SOURCE's."""
    if name in ("Mix", "Dirs", "Rand"):
        net = absnet.compile_source(SOURCE, name, seed=0)
    else:
        path = next(f for f, n in ZOO.CASES if n == name)
        net = absnet.compile_file(path, name, args=ZOO.ARGS.get(name, {"size": 8}), seed=0)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # BatchNorm with non-trivial statistics and affine parameters
        for key, t in net.state_dict().items():
            if key.endswith(("running_mean", "bias")) and "BatchNorm" in _op_of(net, key):
                t.copy_(torch.randn(t.shape, generator=g) * 0.3)
            elif key.endswith(("running_var", "weight")) and "BatchNorm" in _op_of(net, key):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
    return net.eval()


def _op_of(net: Any, key: str) -> str:
    path = tuple(key.split(".")[1:-1])
    return next((n.op for n in net.graph.nodes() if n.path == path), "")


@functools.cache
def exported(name: str, domain: str, input_spec: str = "ball", margins: bool = False) -> tuple[Any, Any]:
    model = export_onnx(network(name), domain=domain, input_spec=input_spec, margins=margins)
    return model, session(model, threads=1)


def inputs(name: str, n: int) -> torch.Tensor:
    return torch.rand((n, *network(name).input_shape), generator=torch.Generator().manual_seed(n))


def close(got: np.ndarray, want: torch.Tensor, what: str) -> None:
    w = want.detach().numpy()
    np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(w).max())), err_msg=what)


def check_against_torch(name: str, domain: str) -> None:
    """One graph, batch sizes 1 and 3: outputs equal the torch backend's."""
    net = network(name)
    _, sess = exported(name, domain)
    for n in (1, 3):
        x = inputs(name, n)
        with torch.no_grad():
            if net.analysis(domain).kind == "point":
                close(run_onnx(sess, input=x)["output"], net(x), f"{name} {domain} N={n}")
                continue
            lo, hi = net.bounds(x, EPS, domain=domain)
        out = run_onnx(sess, input=x, epsilon=EPS)
        assert out["lower"].shape == (n, *net.output_shape)
        close(out["lower"], lo, f"{name} {domain} N={n} lower")
        close(out["upper"], hi, f"{name} {domain} N={n} upper")


# Every analysis on FFNN; every op family at least once on the others. The rest is slow (below).
DEFAULT = [("FFNN", str(a)) for a in EXPORTABLE] + [
    ("ConvSmall", "Box()"), ("ConvSmall", "HBox()"), ("ConvSmall", "ZNIPS()"), ("ConvSmall", "CROWN()"),
    ("cnn_4layer", "CROWN_IBP()"), ("CNN7", "Box()"), ("ResNetWong", "Box()"), ("ResNetWong", "CROWN_IBP()"),
    ("Mix", "Point()"), ("Mix", "Box()"), ("Mix", "HBox()"), ("Mix", "ZSmooth()"), ("Mix", "CROWN()"),
    ("Dirs", "Box()"), ("Dirs", "HNIPS()"), ("Dirs", "ZSwitch()"), ("Dirs", "CROWN_IBP()"), ("Dirs", "DeepPoly()"),
]


@pytest.mark.parametrize(("name", "domain"), DEFAULT, ids=[f"{n}-{d}" for n, d in DEFAULT])
def test_onnx_bounds_equal_torch_at_two_batch_sizes(name: str, domain: str) -> None:
    check_against_torch(name, domain)


FULL = [(n, str(a)) for _, n in ZOO.CASES if n not in ZOO.HEAVY for a in EXPORTABLE if (n, str(a)) not in DEFAULT]
FULL += [(n, str(a)) for n in ("Mix", "Dirs") for a in EXPORTABLE if (n, str(a)) not in DEFAULT]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "domain"), FULL, ids=[f"{n}-{d}" for n, d in FULL])
def test_zoo_onnx_bounds_equal_torch(name: str, domain: str) -> None:
    """The zoo test's selection: back-substitution at every layer only up to LINEAR_LIMIT nonlinear
    inputs, zonotopes only within its memory budget."""
    net, a = network(name), ANALYSES[domain[:-2]]
    nonlinear = sum(math.prod(n.meta["in_shapes"][0]) for n in net.graph.nodes() if n.op in ZOO.NONLINEAR)
    if a.kind == "linear" and a.intermediate != "ibp" and nonlinear > ZOO.LINEAR_LIMIT:
        pytest.skip(f"{nonlinear} nonlinear inputs: too slow for {domain} on 2 cores")
    if a.kind == "zonotope" and estimate(net.graph.copy(), a, False).peak_bytes_per_example * 2 > ZOO.BUDGET:
        pytest.skip(f"{domain} on {name} exceeds the zoo test's memory budget")
    check_against_torch(name, domain)


REFERENCE = [("FFNN", "Point()"), ("FFNN", "Box()"), ("FFNN", "ZNIPS()"), ("FFNN", "CROWN()"), ("Mix", "HBox()"),
             ("Dirs", "DeepPoly()")]


@pytest.mark.parametrize(("name", "domain"), REFERENCE, ids=[f"{n}-{d}" for n, d in REFERENCE])
def test_reference_evaluator_agrees(name: str, domain: str) -> None:
    from onnx.reference import ReferenceEvaluator

    net, (model, _) = network(name), exported(name, domain)
    ref = ReferenceEvaluator(model)
    for n in (1, 3):
        x = inputs(name, n)
        with torch.no_grad():
            if domain == "Point()":
                close(ref.run(None, {"input": x.numpy()})[0], net(x), f"{name} N={n}")
                continue
            lo, hi = net.bounds(x, EPS, domain=domain)
        got = ref.run(["lower", "upper"], {"input": x.numpy(), "epsilon": np.array(EPS, np.float32)})
        close(got[0], lo, f"{name} {domain} N={n} lower")
        close(got[1], hi, f"{name} {domain} N={n} upper")


@pytest.mark.parametrize("domain", ["Box()", "HSmooth()", "ZBox()", "CROWN()", "CROWN_IBP()"])
def test_margins_and_certified_equal_torch(domain: str) -> None:
    net = network("FFNN")
    model, sess = exported("FFNN", domain, margins=True)
    assert [i.name for i in model.graph.input] == ["input", "epsilon", "label"]
    assert [o.name for o in model.graph.output] == ["lower", "upper", "margin_lower", "certified"]
    x = torch.cat([inputs("FFNN", 3), inputs("FFNN", 1)])
    with torch.no_grad():
        y = net(x).argmax(1)
    y[1] = (y[1] + 1) % 10  # a wrong label: never certified
    for eps in (0.0, 1e-3):
        out = run_onnx(sess, input=x, epsilon=eps, label=y)
        with torch.no_grad():
            close(out["margin_lower"], net.margin_lower(x, y, eps, domain=domain), f"{domain} margins eps={eps}")
            cert = net.certify(x, y, eps, domain=domain).numpy()
        assert out["certified"].dtype == np.bool_ and (out["certified"] == cert).all()
        assert not cert[1] and (eps > 0 or cert[[0, 2, 3]].all())


@pytest.mark.parametrize(("name", "domain"), [("FFNN", "HBox()"), ("FFNN", "CROWN()"), ("Mix", "Box()"),
                                              ("Mix", "ZNIPS()")])
def test_box_input_spec_equals_bounds_box(name: str, domain: str) -> None:
    net = network(name)
    model, sess = exported(name, domain, "box")
    assert [i.name for i in model.graph.input] == ["input_lower", "input_upper"]
    for n in (1, 3):
        x = inputs(name, n)
        lower, upper = x - 0.03, x + torch.linspace(-0.05, 0.05, x.numel()).reshape(x.shape)  # some upper < lower
        out = run_onnx(sess, input_lower=lower, input_upper=upper)
        with torch.no_grad():
            lo, hi = net.bounds_box(lower, upper, domain=domain)
        close(out["lower"], lo, f"{name} {domain} box lower")
        close(out["upper"], hi, f"{name} {domain} box upper")


@pytest.mark.parametrize("domain", ["Box()", "HBox()", "ZNIPS()", "CROWN()"])
def test_randomised_directives_run_and_stay_sound(domain: str) -> None:
    """CorrRand/DecorrRand draw with RandomUniformLike (not torch's stream): check soundness instead."""
    net = network("Rand")
    model, sess = exported("Rand", domain)
    assert any(n.op_type == "RandomUniformLike" for n in model.graph.node) == (domain != "CROWN()")
    x = inputs("Rand", 3)
    out = run_onnx(sess, input=x, epsilon=0.05)
    u = torch.rand((200, *x.shape), generator=torch.Generator().manual_seed(0))
    lo, hi = (x - 0.05).clamp(0, 1), (x + 0.05).clamp(0, 1)
    with torch.no_grad():
        ys = net((lo + (hi - lo) * u.round()).reshape(-1, *net.input_shape)).reshape(200, 3, -1).numpy()
    assert (ys >= out["lower"] - 1e-5).all() and (ys <= out["upper"] + 1e-5).all()


def test_graph_contract() -> None:
    net = network("cnn_4layer")
    model, _ = exported("cnn_4layer", "Box()")
    assert model.opset_import[0].version == 17 and model.opset_import[0].domain == ""
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*model.graph.input, *model.graph.output]]
    assert dims == [["N", *net.input_shape], [], ["N", *net.output_shape], ["N", *net.output_shape]]
    # interval arithmetic needs no run-time shape computation: everything static is folded
    assert not {n.op_type for n in model.graph.node} & {"Shape", "Gather", "Concat", "ConstantOfShape", "Abs"}
    names = {i.name for i in model.graph.initializer}
    assert any(n.startswith("layers.") for n in names), names
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)


def test_graph_holds_the_weights_of_the_exported_network() -> None:
    """A graph exported before the weights change no longer matches: the comparison can fail."""
    net = absnet.compile_source(SOURCE, "Dirs", seed=1).eval()
    model = export_onnx(net, domain="HBox()")
    with torch.no_grad():
        next(iter(net.parameters())).mul_(1.5)
    x = inputs("Dirs", 3)
    out = run_onnx(model, input=x, epsilon=EPS)
    with torch.no_grad():
        _, hi = net.bounds(x, EPS, domain="HBox()")
    with pytest.raises(AssertionError):
        close(out["upper"], hi, "stale weights")


@pytest.mark.parametrize("opset", [13, 18, 21])
def test_other_opsets(opset: int) -> None:
    net = network("Mix")
    model = export_onnx(net, domain="HSwitch()", margins=True, opset=opset)
    assert model.opset_import[0].version == opset
    x, y = inputs("Mix", 3), torch.tensor([0, 1, 2])
    out = run_onnx(model, input=x, epsilon=EPS, label=y)
    with torch.no_grad():
        close(out["margin_lower"], net.margin_lower(x, y, EPS, domain="HSwitch()"), f"opset {opset}")


@pytest.mark.parametrize(("domain", "kw", "words"), [
    ("AlphaCROWN()", {}, "gradient steps"), ("WongKolter(proj=4)", {}, "random projections"),
    ("Point()", {"margins": True}, "no input set"), ("Box()", {"input_spec": "l2"}, "input_spec"),
    ("Box()", {"opset": 9}, "opset 9"),
])
def test_unexportable_requests_raise_e502(domain: str, kw: dict, words: str) -> None:
    with pytest.raises(AbsnetError) as e:
        export_onnx(network("FFNN"), domain=domain, **kw)
    diag = e.value.diagnostics[0]
    assert diag.code == "E502" and words in diag.message and diag.help


def test_written_file_and_public_api(tmp_path: Path) -> None:
    path = tmp_path / "ffnn.onnx"
    model = absnet.export_onnx(network("FFNN"), path, domain="CROWN_IBP()")
    assert onnx.load(str(path)).SerializeToString() == model.SerializeToString()
    x = inputs("FFNN", 2)
    with torch.no_grad():
        lo, _ = network("FFNN").bounds(x, EPS, domain="CROWN_IBP()")
    close(run_onnx(path, input=x, epsilon=EPS)["lower"], lo, "from the file")


# --------------------------------------------------------------------------- absc compile

FFNN_ARGS = ["--network", "FFNN", "--arg", "width=16", "--arg", "depth=3", "--arg", "size=8"]


def test_absc_compile_writes_and_smoke_tests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new" / "folder" / "net.onnx"  # -o creates the folders it names
    code = cli.main(["compile", str(ROOT / "models" / "diffai.absnet"), *FFNN_ARGS, "--target", "onnx",
                     "--domain", "HBox()", "--margins", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and out.exists()
    assert f"wrote {out}" in text and "opset 17" in text and "label int64 [N]" in text
    assert "max relative difference to the torch backend" in text


def test_absc_compile_smoke_tests_a_box_input_with_margins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "box.onnx"
    code = cli.main(["compile", str(ROOT / "models" / "diffai.absnet"), *FFNN_ARGS, "--domain", "CROWN()",
                     "--input-spec", "box", "--margins", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "input_lower float32" in text and "label int64 [N]" in text
    assert float(text.rsplit("torch backend ", 1)[1].split()[0]) <= 1e-5


def test_absc_compile_loads_a_safetensors_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import save_file

    net = absnet.compile_file(ROOT / "models" / "diffai.absnet", "FFNN", args={"width": 16, "depth": 3, "size": 8},
                              seed=5).eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    out = tmp_path / "w.onnx"
    code = cli.main(["compile", str(ROOT / "models" / "diffai.absnet"), *FFNN_ARGS, "--domain", "CROWN()",
                     "--checkpoint", str(tmp_path / "w.safetensors"), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    x = inputs("FFNN", 3)
    with torch.no_grad():
        _, hi = net.bounds(x, EPS, domain="CROWN()")
    close(run_onnx(out, input=x, epsilon=EPS)["upper"], hi, "checkpoint weights")
    code = cli.main(["compile", str(ROOT / "models" / "diffai.absnet"), "--network", "FFNN",
                     "--checkpoint", str(tmp_path / "w.safetensors"), "-o", str(out)])
    assert code == 1 and "error[E605]" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "code", "words"), [
    (["--target", "tflite"], 2, "unknown --target tflite; targets: onnx, onnx-train, export, torchscript"),
    (["--domain", "AlphaCROWN()"], 1, "error[E502]"),
])
def test_absc_compile_errors(argv: list[str], code: int, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["compile", str(ROOT / "models" / "diffai.absnet"), *FFNN_ARGS, *argv]) == code
    assert words in capsys.readouterr().err
