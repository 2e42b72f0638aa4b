"""torch.export (.pt2) and TorchScript programs of an analysis equal the torch backend (DESIGN §6).

One program per (network, analysis), run at batch sizes 1 and 4 (traced at 2): outputs equal
``net.bounds`` within |got − want| ≤ 1e-5·|want| + 1e-5·max(1, max|want|) (same float32 kernels in a
different order; see tests/backends/onnx/test_onnx_export.py for why the absolute part scales with
the largest bound). A saved .pt2 is loaded in a fresh interpreter that cannot import absnet.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from absnet.backends.torch.export import (
    compile_target,
    example_inputs,
    export_program,
    export_torchscript,
    features,
    reference,
    scriptable_graph,
)
from absnet.diagnostics import AbsnetError
from absnet.ir.domains import ANALYSES

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("zoo_cases", ROOT / "tests" / "models" / "test_zoo_soundness.py")
ZOO = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(ZOO)  # type: ignore[union-attr]
EXPORTABLE = [str(a) for a in ANALYSES.values() if not a.alpha_iters and not a.proj]
BATCHES = (1, 4)

# the ONNX tests' small networks (their op mix, eval-mode directives and random directives), built and
# given non-trivial BatchNorm statistics the same way
_cases = importlib.util.spec_from_file_location("onnx_export_cases", ROOT / "tests" / "backends" / "onnx" /
                                                "test_onnx_export.py")
EXPORT = importlib.util.module_from_spec(_cases)  # type: ignore[arg-type]
_cases.loader.exec_module(EXPORT)  # type: ignore[union-attr]
network = EXPORT.network


@functools.cache
def program(name: str, domain: str, input_spec: str = "ball", margins: bool = False) -> Any:
    # check=False: the comparison below is this test's own, not the exporter's self-check
    return export_program(network(name), domain=domain, input_spec=input_spec, margins=margins, check=False)


def close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, what
    if want.dtype == torch.bool:
        assert torch.equal(got, want), what
        return
    w = want.detach().double().numpy()
    np.testing.assert_allclose(got.detach().double().numpy(), w, rtol=1e-5,
                               atol=1e-5 * max(1.0, float(np.abs(w).max())), err_msg=what)


def check(fn: Any, name: str, domain: str, input_spec: str = "ball", margins: bool = False) -> None:
    net = network(name)
    a = net.analysis(domain)
    for n in BATCHES:
        args = example_inputs(net, a, input_spec, margins, batch=n, seed=n)
        with torch.no_grad():
            got = tuple(fn(*args))
        want = reference(net, a, input_spec, margins, args)
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            close(g, w, f"{name} {domain} N={n} output {i}")


DEFAULT = [("FFNN", d) for d in EXPORTABLE if d in (
    "Point()", "Box()", "HBox()", "ZNIPS()", "CROWN()", "CROWN_IBP()", "DeepPoly()")]
DEFAULT += [("Mix", "HBox()")]  # FastLin, ConvSmall and the rest: the slow matrix below


@pytest.mark.parametrize(("name", "domain"), DEFAULT, ids=[f"{n}-{d}" for n, d in DEFAULT])
def test_exported_program_equals_torch_at_two_batch_sizes(name: str, domain: str) -> None:
    check(program(name, domain).module(), name, domain)


def test_margins_and_box_input_spec_equal_torch() -> None:
    check(program("FFNN", "ZNIPS()", margins=True).module(), "FFNN", "ZNIPS()", margins=True)
    check(program("FFNN", "CROWN_IBP()", input_spec="box", margins=True).module(), "FFNN", "CROWN_IBP()",
          input_spec="box", margins=True)


def test_comparison_detects_a_wrong_program() -> None:
    """The check above can fail: HBox's program is not CROWN's."""
    with pytest.raises(AssertionError):
        check(program("FFNN", "HBox()").module(), "FFNN", "CROWN()")


@pytest.mark.slow
def test_chunked_back_substitution_is_planned_statically(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny chunks: the rules' Python arithmetic on the batch size (CROWN chunking) sees the planning
    batch, not the symbolic one, and the program still runs at every batch size."""
    monkeypatch.setenv("ABSNET_CROWN_CHUNK_MIB", "0.003")  # FFNN: 4 chunks of 6 rows at batch 2
    prog = export_program(network("FFNN"), domain="CROWN_IBP()", check=False, plan_batch=2)
    check(prog.module(), "FFNN", "CROWN_IBP()")


FRESH = """
import sys
class Block:  # absnet may be installed (CI's editable install): any attempt to import it fails here
    tried = []
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "absnet":
            Block.tried.append(name)
            raise ImportError("absnet is blocked in this process")
        return None
sys.meta_path.insert(0, Block())
import torch
feeds = torch.load({feeds!r})
prog = torch.export.load({path!r}).module()
out = {{str(n): tuple(prog(*args)) for n, args in feeds.items()}}
torch.save(out, {out!r})
assert not Block.tried and not any(m.split(".")[0] == "absnet" for m in sys.modules), Block.tried
print("ok")
"""


def test_saved_program_runs_in_a_fresh_process_without_absnet(tmp_path: Path) -> None:
    name, domain = "FFNN", "CROWN()"
    net, a = network(name), ANALYSES["CROWN"]
    path = tmp_path / "ffnn_crown.pt2"
    torch.export.save(program(name, domain), str(path))
    feeds = {n: example_inputs(net, a, batch=n, seed=n) for n in BATCHES}
    torch.save(feeds, tmp_path / "feeds.pt")
    code = textwrap.dedent(FRESH).format(feeds=str(tmp_path / "feeds.pt"), path=str(path),
                                         out=str(tmp_path / "out.pt"))
    run = subprocess.run([sys.executable, "-I", "-c", code], cwd="/tmp", capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    out = torch.load(tmp_path / "out.pt")
    for n in BATCHES:
        for g, w in zip(out[str(n)], reference(net, a, "ball", False, feeds[n]), strict=True):
            close(g, w, f"fresh process N={n}")


@pytest.mark.skipif(not features()["torchscript"], reason="this torch has no TorchScript")
def test_torchscript_equals_torch_and_reloads(tmp_path: Path) -> None:
    """The scripted graph of the (cached) CROWN program, saved and re-loaded (export_torchscript itself:
    test_compile_target_reports_stats and the slow tests)."""
    path = tmp_path / "net.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation and annotation warnings
        torch.jit.save(torch.jit.script(scriptable_graph(program("FFNN", "CROWN()"))), str(path))
        loaded = torch.jit.load(str(path))
    check(loaded, "FFNN", "CROWN()")


def test_scripted_graph_keeps_the_batch_symbolic() -> None:
    """No batch size of the trace survives as a constant: sizes are read with x.size(d)."""
    code = scriptable_graph(program("FFNN", "CROWN()")).code
    assert "aten.sym_size" not in code and ".default(" not in code
    assert "= args_0.size(0)" in code


@pytest.mark.parametrize("domain", ["AlphaCROWN()", "WongKolter(proj=4)"])
def test_torch_only_analyses_raise_e502(domain: str) -> None:
    for fn in (export_program, export_torchscript):
        with pytest.raises(AbsnetError) as err:
            fn(network("FFNN"), domain=domain)
        assert err.value.diagnostics[0].code == "E502"


def test_random_directive_raises_e502() -> None:
    with pytest.raises(AbsnetError) as err:
        export_program(network("Rand"), domain="HBox()")
    assert err.value.diagnostics[0].code == "E502" and "CorrRand" in str(err.value)  # Rand's first random one


@pytest.mark.parametrize("target", [pytest.param("export", marks=pytest.mark.slow), "torchscript"])
def test_compile_target_reports_stats(target: str, tmp_path: Path) -> None:
    path = tmp_path / f"f.{target}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        stats = compile_target(network("FFNN"), target, path, "HBox()", "ball", True)
    assert stats["bytes"] == path.stat().st_size > 0
    assert stats["inputs"] == ["input", "epsilon", "label"]
    assert stats["outputs"] == ["lower", "upper", "margin_lower", "certified"]
    assert stats["max_rel_diff"] <= 1e-5


def test_compile_target_rejects_other_targets(tmp_path: Path) -> None:
    with pytest.raises(AbsnetError) as err:
        compile_target(network("FFNN"), "tflite", tmp_path / "f.x", "HBox()", "ball", False)
    assert err.value.diagnostics[0].code == "E502"


SLOW_NETS = [n for _, n in ZOO.CASES if n not in ZOO.HEAVY] + ["Mix", "Dirs"]
FULL = [(n, d) for n in SLOW_NETS for d in EXPORTABLE if (n, d) not in DEFAULT]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "domain"), FULL, ids=[f"{n}-{d}" for n, d in FULL])
def test_zoo_exported_programs_equal_torch(name: str, domain: str) -> None:
    """The zoo test's selection: back-substitution at every layer up to LINEAR_LIMIT nonlinear inputs."""
    from absnet.passes.estimate_cost import estimate

    net, a = network(name), ANALYSES[domain.split("(")[0]]
    nonlinear = sum(math.prod(n.meta["in_shapes"][0]) for n in net.graph.nodes() if n.op in ZOO.NONLINEAR)
    if a.kind == "linear" and a.intermediate != "ibp" and nonlinear > ZOO.LINEAR_LIMIT:
        pytest.skip(f"{nonlinear} nonlinear inputs: too slow for {domain} on 2 cores")
    if a.kind == "zonotope" and estimate(net.graph.copy(), a, False).peak_bytes_per_example * 2 > ZOO.BUDGET:
        pytest.skip(f"{domain} on {name} exceeds the zoo test's memory budget")
    check(program(name, domain).module(), name, domain)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ConvSmall", "ResNetWong", "Mix"])  # + FFNN CROWN by default
def test_zoo_torchscript_equals_torch(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = export_torchscript(network(name), domain="CROWN_IBP()", check=False)
    check(scripted, name, "CROWN_IBP()")


def test_absc_compile_export_target_writes_a_checked_program(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from absnet import cli

    out = tmp_path / "ffnn.pt2"
    code = cli.main(["compile", str(Path(__file__).parents[2] / "models" / "diffai.absnet"), "--network", "FFNN",
                     "--arg", "width=16", "--arg", "depth=3", "--arg", "size=8", "--target", "export",
                     "--domain", "CROWN()", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and out.exists(), text
    assert "torch.export .pt2" in text and "outputs   lower, upper" in text
    assert float(text.rsplit("torch backend ", 1)[1].split()[0]) <= 1e-5
