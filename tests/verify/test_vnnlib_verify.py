"""Verdicts on VNN-LIB properties, each checked by an exact oracle (a MILP) or by re-evaluation.

The oracle computes, for one case and one disjunct, t* = min over the box of max_i (C·f(x) − d)_i
exactly (a MILP with big-M ReLU constraints from interval bounds, scipy.optimize.milp): the
disjunct is reachable iff t* ≤ 0. An ``unsat`` verdict must agree with t* > 0 for every disjunct of
every case; a ``sat`` counterexample must lie in the box and satisfy a disjunct when re-evaluated.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.optimize import Bounds, LinearConstraint, milp

import absnet
from absnet.verify import property as P
from absnet.verify.property import format_counterexample, verify_property
from absnet.verify.vnnlib import Case, Disjunct, Property, parse_vnnlib, read_vnnlib, robustness_property

TOL = 1e-6
DATA = Path(os.environ.get("ABSNET_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data")).resolve()

pytestmark = pytest.mark.usefixtures("one_thread_module")


# --------------------------------------------------------------------------- the exact oracle


def affine_layers(net: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (W, b) of each Linear layer of an MLP (Linear/ReLU alternating) in float64."""
    sd = net.state_dict()
    idx = sorted({int(k.split(".")[1]) for k in sd if k.endswith(".weight")})
    return [(sd[f"layers.{i}.weight"].double().numpy(), sd[f"layers.{i}.bias"].double().numpy()) for i in idx]


def forward(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    for i, (w, b) in enumerate(layers):
        x = w @ x + b
        if i < len(layers) - 1:
            x = np.maximum(x, 0)
    return x


def min_violation(layers: list[tuple[np.ndarray, np.ndarray]], lo: np.ndarray, hi: np.ndarray,
                  C: np.ndarray, d: np.ndarray) -> float:
    """min over x ∈ [lo, hi] of max_i (C·f(x) − d)_i, exactly (MILP); +inf/-inf never occur (bounded box)."""
    # variables: x | per hidden layer: z (pre), a (post), δ (binary) | t
    n = lo.size
    sizes = [w.shape[0] for w, _ in layers[:-1]]
    nvar = n + 3 * sum(sizes) + 1
    lb, ub = np.full(nvar, -np.inf), np.full(nvar, np.inf)
    lb[:n], ub[:n] = lo, hi
    integ = np.zeros(nvar)
    rows: list[np.ndarray] = []
    rlo: list[float] = []
    rhi: list[float] = []

    def row(coefs: dict[int, float], low: float, high: float) -> None:
        r = np.zeros(nvar)
        for k, v in coefs.items():
            r[k] += v
        rows.append(r)
        rlo.append(low)
        rhi.append(high)

    prev = list(range(n))
    plo, phi = lo.copy(), hi.copy()
    off = n
    for (w, b), m in zip(layers[:-1], sizes):
        z, a, dl = range(off, off + m), range(off + m, off + 2 * m), range(off + 2 * m, off + 3 * m)
        off += 3 * m
        wp, wn = np.maximum(w, 0), np.minimum(w, 0)
        zl, zu = wp @ plo + wn @ phi + b, wp @ phi + wn @ plo + b
        for j in range(m):
            row({z[j]: 1.0, **{p: -w[j, k] for k, p in enumerate(prev)}}, b[j], b[j])  # z = W·prev + b
            lb[z[j]], ub[z[j]] = zl[j], zu[j]
            lb[a[j]], ub[a[j]] = 0.0, max(zu[j], 0.0)
            lb[dl[j]], ub[dl[j]], integ[dl[j]] = 0, 1, 1
            if zu[j] <= 0:
                row({a[j]: 1.0}, 0.0, 0.0)
            elif zl[j] >= 0:
                row({a[j]: 1.0, z[j]: -1.0}, 0.0, 0.0)
            else:
                row({a[j]: 1.0, z[j]: -1.0}, 0.0, np.inf)  # a ≥ z
                row({a[j]: 1.0, z[j]: -1.0, dl[j]: -zl[j]}, -np.inf, -zl[j])  # a ≤ z − l(1 − δ)
                row({a[j]: 1.0, dl[j]: -zu[j]}, -np.inf, 0.0)  # a ≤ u·δ
        prev, plo, phi = list(a), np.maximum(zl, 0), np.maximum(zu, 0)
    w, b = layers[-1]
    t = nvar - 1
    for i in range(C.shape[0]):  # (C·(W·a + b))_i − d_i − t ≤ 0
        cw = C[i] @ w
        row({t: -1.0, **{p: cw[k] for k, p in enumerate(prev)}}, -np.inf, d[i] - C[i] @ b)
    if C.shape[0] == 0:
        return -math.inf
    cost = np.zeros(nvar)
    cost[t] = 1.0
    res = milp(cost, constraints=LinearConstraint(np.array(rows), rlo, rhi), integrality=integ,
               bounds=Bounds(lb, ub), options={"mip_rel_gap": 0.0})
    assert res.status == 0, res.message
    return float(res.fun)


def soundness_problems(net: Any, prop: Property, result: Any) -> list[str]:
    """What the exact oracle (or the re-evaluation of a counterexample) contradicts in ``result``."""
    layers = affine_layers(net)
    problems = []
    if result.verdict == "unsat":
        for c, case in enumerate(prop.cases):
            for k, dj in enumerate(case.disjuncts):
                t = min_violation(layers, case.lower, case.upper, dj.C, dj.d)
                if t <= -TOL:
                    problems.append(f"unsat, but case {c} reaches disjunct {k} (t* = {t:.3g})")
    if result.verdict == "sat":
        x, y = result.x, forward(layers, result.x)
        box = any(bool(np.all((x >= case.lower) & (x <= case.upper))) for case in prop.cases)
        hit = any(bool(np.all(dj.C @ y <= dj.d + 1e-9)) for case in prop.cases for dj in case.disjuncts
                  if np.all((x >= case.lower) & (x <= case.upper)))
        if not (box and hit):
            problems.append(f"sat, but the counterexample is {'outside every box' if not box else 'in no disjunct'}")
    return problems


# --------------------------------------------------------------------------- generated instances


def random_net(seed: int, n_in: int, hidden: tuple[int, ...], n_out: int) -> Any:
    body = " ".join(f"Linear({h}) ReLU()" for h in hidden)
    return absnet.compile_source(f"network R {{ input [{n_in}] range [-1, 1] {body} Linear({n_out}) }}",
                                 seed=seed).eval()


def random_property(rng: np.random.Generator, net: Any) -> Property:
    """A random box and 1–3 disjuncts of 1–2 random rows; every row is violated at the centre by
    0.01–0.2 (the centre is no counterexample, so the cascade has to work)."""
    n_in, n_out = net.input_shape[0], net.output_shape[0]
    centre = rng.uniform(-1, 1, n_in)
    rad = rng.uniform(0.1, 1.0, n_in)
    yc = forward(affine_layers(net), centre)
    ds = []
    for _ in range(int(rng.integers(1, 4))):
        m = int(rng.integers(1, 3))
        C = rng.normal(size=(m, n_out))
        ds.append(Disjunct(C, C @ yc - rng.uniform(0.01, 0.2, m), np.zeros(m, dtype=bool)))
    return Property(n_in, n_out, (Case(centre - rad, centre + rad, tuple(ds)),))


def instances(count: int, seed: int = 0) -> list[tuple[Any, Property]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n_in, n_out = int(rng.integers(2, 6)), int(rng.integers(2, 4))
        hidden = (int(rng.integers(3, 9)), int(rng.integers(3, 9)))
        net = random_net(seed * 1000 + i, n_in, hidden, n_out)
        out.append((net, random_property(rng, net)))
    return out


def test_every_verdict_on_random_tiny_networks_agrees_with_the_exact_oracle() -> None:
    settled: dict[str, int] = {}
    for net, prop in instances(24):
        r = verify_property(net, prop, ["Box()", "CROWN()"], timeout=10, steps=20, max_boxes=2000)
        assert r.verdict in ("unsat", "sat", "unknown"), r.message
        assert soundness_problems(net, prop, r) == []
        key = f"{r.verdict}: {'split' if 'split' in (r.by or '') else r.by}"
        settled[key] = settled.get(key, 0) + 1
    # every step of the cascade is exercised: analyses, the attack and splitting, both verdicts
    for key in ("unsat: Box()", "unsat: CROWN()", "unsat: split", "sat: pgd"):
        assert settled.get(key, 0) >= 1, settled


def test_splitting_decides_what_the_oracle_decides_with_a_margin() -> None:
    """Complete enough on tiny nets: a property the oracle decides with a margin of 0.001 is decided alike."""
    decided = 0
    for net, prop in instances(12, seed=7):
        r = verify_property(net, prop, ["Box()"], timeout=20, split_analysis="CROWN()", max_boxes=20000)
        layers = affine_layers(net)
        t = min(min_violation(layers, c.lower, c.upper, dj.C, dj.d) for c in prop.cases for dj in c.disjuncts)
        if t > 1e-3:
            assert r.verdict == "unsat", (r, t)
            decided += 1
        elif t < -1e-3:
            assert r.verdict == "sat", (r, t)
            decided += 1
        assert soundness_problems(net, prop, r) == []
    assert decided >= 10


def test_the_oracle_catches_a_broken_verifier(monkeypatch: pytest.MonkeyPatch) -> None:
    """A verifier that excludes every disjunct says unsat on a reachable one: the oracle objects."""
    net = random_net(3, 2, (4, 4), 2)
    layers = affine_layers(net)
    y = forward(layers, np.zeros(2))
    C = np.array([[1.0, 0.0]])
    prop = Property(2, 2, (Case(np.full(2, -0.1), np.full(2, 0.1), (Disjunct(C, y[:1] + 0.5, np.zeros(1, bool)),)),))
    assert min_violation(layers, prop.cases[0].lower, prop.cases[0].upper, C, y[:1] + 0.5) < -0.4
    honest = verify_property(net, prop, ["Box()"])
    assert honest.verdict == "sat" and soundness_problems(net, prop, honest) == []
    monkeypatch.setattr(P._Spec, "excluded", lambda self, lb: torch.ones(lb.shape[0], self.D, dtype=torch.bool))
    monkeypatch.setattr(P, "_check_points", lambda *a, **k: None)
    broken = verify_property(net, prop, ["Box()"])
    assert broken.verdict == "unsat"
    assert soundness_problems(net, prop, broken) and "reaches disjunct 0" in soundness_problems(net, prop, broken)[0]


def test_a_counterexample_outside_the_disjunct_is_reported_by_the_check() -> None:
    net = random_net(4, 2, (4, 4), 2)
    never = Disjunct(np.eye(2)[:1], np.array([-1e6]), np.zeros(1, bool))
    prop = Property(2, 2, (Case(np.zeros(2), np.ones(2), (never,)),))
    fake = P.PropertyResult("sat", x=np.array([0.5, 0.5]), y=np.zeros(2))
    assert soundness_problems(net, prop, fake) == ["sat, but the counterexample is in no disjunct"]


def test_each_analysis_kind_bounds_c_times_y_soundly_against_samples() -> None:
    """Box, zonotope and linear outputs folded through C: lower bounds below every sampled C·f(x)."""
    net = random_net(5, 3, (8, 8), 3)
    g = torch.Generator().manual_seed(0)
    lo, hi = -torch.rand(2, 3, generator=g, dtype=torch.float64), torch.rand(2, 3, generator=g, dtype=torch.float64)
    C = torch.randn(4, 3, generator=g, dtype=torch.float64)
    net64 = P.float64_copy(net)
    u = torch.rand(2, 500, 3, generator=g, dtype=torch.float64)
    pts = lo.unsqueeze(1) + (hi - lo).unsqueeze(1) * u
    with torch.no_grad():
        vals = (net64(pts.reshape(-1, 3)) @ C.T).reshape(2, 500, 4).amin(dim=1)
        for a in ("Box()", "HBox()", "ZNIPS()", "CROWN_IBP()", "CROWN()", "AlphaCROWN(iters=3)"):
            lb, _ = P._lower(net64, net64.analysis(a), lo, hi, C)
            assert (lb <= vals + 1e-9).all(), a


def test_an_internal_error_is_an_error_verdict_never_unsat(monkeypatch: pytest.MonkeyPatch) -> None:
    net = random_net(0, 2, (4, 4), 2)
    never = Disjunct(np.eye(2)[:1], np.array([-1e6]), np.zeros(1, bool))  # unreachable: no counterexample ends it
    prop = Property(2, 2, (Case(np.zeros(2), np.ones(2), (never,)),))

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(P, "_lower", boom)
    r = verify_property(net, prop, ["Box()"])
    assert r.verdict == "error" and "RuntimeError: boom" in r.message


def test_a_property_of_the_wrong_size_is_an_error_naming_both_sizes() -> None:
    net = random_net(0, 3, (4,), 2)
    r = verify_property(net, robustness_property(np.zeros(4), 0, 0.1, 2), ["Box()"])
    assert r.verdict == "error" and "E504" in r.message and "4 inputs" in r.message and "3 inputs" in r.message


def test_a_timeout_is_reported_as_timeout() -> None:
    net = random_net(1, 5, (8, 8), 3)
    prop = random_property(np.random.default_rng(1), net)
    r = verify_property(net, prop, ["Box()"], timeout=0.0, attack=False)
    assert r.verdict in ("timeout", "unsat", "sat")
    assert r.verdict != "unknown"


def test_acas_style_disjunction_of_input_boxes_is_verified_case_by_case() -> None:
    net = random_net(11, 2, (6, 6), 3)
    layers = affine_layers(net)
    text = """; two boxes, as ACAS Xu property 6
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(assert (or (and (>= X_0 -0.5) (<= X_0 -0.2) (>= X_1 -0.3) (<= X_1 0.3))
            (and (>= X_0 0.2) (<= X_0 0.5) (>= X_1 -0.3) (<= X_1 0.3))))
(assert (or (and (<= Y_0 Y_1)) (and (<= Y_0 Y_2))))
"""
    prop = parse_vnnlib(text)
    assert len(prop.cases) == 2 and all(len(c.disjuncts) == 2 for c in prop.cases)
    r = verify_property(net, prop, ["Box()", "CROWN()"], timeout=20)
    assert r.verdict in ("sat", "unsat") and soundness_problems(net, prop, r) == []
    reach = [min_violation(layers, c.lower, c.upper, dj.C, dj.d) for c in prop.cases for dj in c.disjuncts]
    assert (r.verdict == "sat") == (min(reach) <= 0)


def test_the_counterexample_file_is_vnn_comp_format() -> None:
    text = format_counterexample(np.array([0.5, -1.0]), np.array([2.0]))
    assert text == "sat\n((X_0 0.5)\n (X_1 -1.0)\n (Y_0 2.0))\n"


def test_a_strict_row_needs_a_strict_counterexample() -> None:
    """y = x on [0, 0]: the only point gives Y_0 = 0, so Y_0 < 0 is unreachable and Y_0 <= 0 is reachable."""
    net = absnet.compile_source("network I { input [1] range [-1, 1] Linear(1) }")
    with torch.no_grad():
        net.state_dict()["layers.0.weight"].fill_(1.0)
        net.state_dict()["layers.0.bias"].zero_()
    head = "(declare-const X_0 Real)(declare-const Y_0 Real)(assert (>= X_0 0))(assert (<= X_0 0))"
    assert verify_property(net, parse_vnnlib(head + "(assert (<= Y_0 0))"), ["Box()"]).verdict == "sat"
    assert verify_property(net, parse_vnnlib(head + "(assert (< Y_0 0))"), ["Box()"], split=False).verdict == "unknown"


# --------------------------------------------------------------------------- MNIST robustness


def train_mnist_mlp(hidden: int, count: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """The benchmark's MNIST MLP (benchmarks/vnnlib_cascade.py: 300 clean steps) and ``count`` test images."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "vnnlib_cascade.py"
    spec = importlib.util.spec_from_file_location("vnnlib_cascade", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    trained = bench.train_mnist_mlp(hidden, count, DATA)
    if trained is None:
        pytest.skip(f"MNIST not found in {DATA / 'mnist'}: set ABSNET_DATA to the shared data folder")
    return trained


def check_mnist(net: Any, xs: torch.Tensor, ys: torch.Tensor, epsilons: list[float], folder: Path) -> dict[str, int]:
    from absnet.verify.vnnlib import write_robustness

    layers = affine_layers(net)
    seen: dict[str, int] = {}
    for i, (x, y) in enumerate(zip(xs, ys)):
        eps = epsilons[i % len(epsilons)]
        prop = read_vnnlib(write_robustness(folder / f"p{i}.vnnlib", x.numpy(), int(y), eps, 10))
        r = verify_property(net, prop, ["Box()", "CROWN()"], timeout=10, max_boxes=200)
        assert r.verdict in ("unsat", "sat", "unknown"), r.message
        seen[r.verdict] = seen.get(r.verdict, 0) + 1
        if r.verdict == "unsat":
            case = prop.cases[0]
            worst = min(min_violation(layers, case.lower, case.upper, dj.C, dj.d) for dj in case.disjuncts)
            assert worst > -TOL, (i, worst)
        if r.verdict == "sat":
            assert soundness_problems(net, prop, r) == []
            out = forward(layers, r.x)
            assert any(out[j] >= out[int(y)] for j in range(10) if j != int(y))  # a class at least as high as y
    return seen


def test_mnist_robustness_verdicts_agree_with_the_exact_oracle(tmp_path: Path) -> None:
    net, xs, ys = train_mnist_mlp(8, 6)
    seen = check_mnist(net, xs, ys, [0.005, 0.05, 0.01], tmp_path)
    assert seen.get("unsat", 0) >= 1 and seen.get("sat", 0) >= 1, seen


@pytest.mark.slow
def test_mnist_robustness_verdicts_agree_with_the_exact_oracle_wider_and_more(tmp_path: Path) -> None:
    net, xs, ys = train_mnist_mlp(16, 24)
    seen = check_mnist(net, xs, ys, [0.005, 0.02, 0.05, 0.01], tmp_path)
    assert seen.get("unsat", 0) >= 4 and seen.get("sat", 0) >= 4, seen


# --------------------------------------------------------------------------- the command line

NET_SOURCE = "network R { input [3] range [-1, 1] Linear(8) ReLU() Linear(8) ReLU() Linear(3) }\n"


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from absnet.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def write_pair(folder: Path, eps: float, name: str) -> tuple[Any, Path, Path]:
    from absnet.verify.vnnlib import write_robustness

    spec = folder / "r.absnet"
    spec.write_text(NET_SOURCE)
    net = absnet.compile_file(spec).eval()
    x = np.array([0.1, 0.2, 0.3])
    label = int(net(torch.tensor(x, dtype=torch.float32).unsqueeze(0)).argmax())
    return net, spec, write_robustness(folder / name, x, label, eps, 3, (-1.0, 1.0))


def test_cli_verifies_a_property_and_writes_the_counterexample_file(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    net, spec, small = write_pair(tmp_path, 0.001, "small.vnnlib")
    code, out, err = cli(["verify", str(spec), str(small), "--analyses", "Box(), CROWN()"], capsys)
    assert code == 0 and out.splitlines()[0] == "unsat" and "by Box()" in out and "seed-0 initial weights" in err
    _, _, big = write_pair(tmp_path, 2.0, "big.vnnlib")  # the whole range: another class wins somewhere
    ce = tmp_path / "out" / "big.counterexample"
    code, out, _ = cli(["verify", str(spec), str(big), "--counterexample", str(ce), "--timeout", "20"], capsys)
    assert code == 0 and out.splitlines()[0] == "sat"
    text = ce.read_text()
    assert text.startswith("sat\n((X_0 ") and text.rstrip().endswith(")")
    values = dict(item.strip("() ").split() for item in text.splitlines()[1:])
    x = np.array([float(values[f"X_{i}"]) for i in range(3)])
    prop = read_vnnlib(big)
    assert soundness_problems(net, prop, P.PropertyResult("sat", x=x)) == []
    y = forward(affine_layers(net), x)
    assert np.allclose([float(values[f"Y_{j}"]) for j in range(3)], y, rtol=0, atol=1e-12)


def test_cli_json_and_a_bad_property_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    _, spec, small = write_pair(tmp_path, 0.001, "small.vnnlib")
    code, out, _ = cli(["verify", str(spec), str(small), "--json", "--analyses", "Box()"], capsys)
    j = json.loads(out)
    assert code == 0 and j["verdict"] == "unsat" and j["by"] == "Box()" and j["stats"]["Box()"] == 2
    bad = tmp_path / "bad.vnnlib"
    bad.write_text("(declare-const X_0 Real)\n(assert (<= X_0 Y_9))\n")
    code, out, err = cli(["verify", str(spec), str(bad)], capsys)
    assert code == 1 and out.splitlines()[0] == "error" and f"{bad}:2:17: error[E504]: unknown variable 'Y_9'" in err
    code, _, err = cli(["verify", str(spec), str(small), "--timeout", "-1"], capsys)
    assert code == 2


def test_cli_runs_a_benchmark_csv_with_relative_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_pair(tmp_path, 0.001, "small.vnnlib")
    write_pair(tmp_path, 2.0, "big.vnnlib")
    csv_path = tmp_path / "instances.csv"
    csv_path.write_text("r.absnet,small.vnnlib,10\nr.absnet,big.vnnlib,10\nr.absnet,missing.vnnlib,10\n")
    results = tmp_path / "results.csv"
    code, out, err = cli(["verify", "--instances", str(csv_path), "--results", str(results)], capsys)
    rows = [line.split(",") for line in results.read_text().splitlines()]
    assert [r[:3] for r in rows] == [["r.absnet", "small.vnnlib", "unsat"], ["r.absnet", "big.vnnlib", "sat"],
                                     ["r.absnet", "missing.vnnlib", "error"]]
    assert all(float(r[3]) >= 0 for r in rows)
    assert code == 1 and f"results: {results}" in out and "verify: 3/3" in err and "cannot read" in err
    assert cli(["verify", "--instances", str(csv_path), "--json"], capsys)[0] == 2
    assert cli(["verify", "--instances", str(csv_path), "r.absnet"], capsys)[0] == 2


def test_cli_verifies_an_onnx_network_from_its_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if getattr(absnet, "compile_onnx", None) is None:
        pytest.importorskip("absnet.backends.onnx.importer", reason="absnet.compile_onnx (the importer) is not there")
    net, _, small = write_pair(tmp_path, 0.001, "small.vnnlib")
    _, _, big = write_pair(tmp_path, 2.0, "big.vnnlib")
    onnx = tmp_path / "r.onnx"
    absnet.export_onnx(net, onnx, domain="Point()")
    code, out, err = cli(["verify", str(onnx), str(small)], capsys)
    assert code == 0 and out.splitlines()[0] == "unsat", err
    ce = tmp_path / "ce.txt"
    code, out, err = cli(["verify", str(onnx), str(big), "--counterexample", str(ce)], capsys)
    assert code == 0 and out.splitlines()[0] == "sat", err
    values = dict(item.strip("() ").split() for item in ce.read_text().splitlines()[1:])
    x = np.array([float(values[f"X_{i}"]) for i in range(3)])
    assert soundness_problems(net, read_vnnlib(big), P.PropertyResult("sat", x=x)) == []


def test_compile_emits_a_benchmark_that_verify_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("absnet.backends.onnx.importer", reason="the ONNX importer is not there")
    spec = tmp_path / "d.absnet"
    spec.write_text("network D { input [1, 8, 8] range [0, 1] Flatten() Linear(8) ReLU() Linear(10) }\n")
    onnx, bench = tmp_path / "d.onnx", tmp_path / "bench"
    code, out, err = cli(["compile", str(spec), "--domain", "Point()", "-o", str(onnx), "--emit-vnnlib", str(bench),
                          "--data", "digits", "--count", "3", "--eps", "0.05"], capsys)
    assert code == 0, err
    assert (bench / "instances.csv").read_text().splitlines() == [
        f"../d.onnx,prop_{i}_eps_0.05.vnnlib,60" for i in range(3)]
    code, out, err = cli(["verify", "--instances", str(bench / "instances.csv"), "--timeout", "5"], capsys)
    rows = [line.split(",") for line in out.splitlines()]
    assert code == 0 and len(rows) == 3 and all(r[2] in ("sat", "unsat", "unknown", "timeout") for r in rows), err
    code, _, err = cli(["compile", str(spec), "--domain", "Box()", "--emit-vnnlib", str(bench)], capsys)
    assert code == 2 and "goes with --target onnx" in err
