"""Soundness and exactness of every linear-domain rule, in float64 (DESIGN §5), over the CASES table.

Inputs are linear values over random boxes (degenerate, tiny, straddling 0, far from 0, tied lower
bounds), either sources themselves (``source``) or affine images of one shared source (``mixed``:
correlated inputs whose intervals are back-substituted under CROWN and IBP boxes under CROWN_IBP).
Checked against the point rule on ≥ 1000 sampled points (half of them vertices): the elementwise
bounds, back-substituted random objectives Λ (shared by the batch and per example), the output box,
α-CROWN slopes in [−0.5, 1.5]; the affine rules' backward maps are exact; the activations' lines
hold on dense grids over intervals in many regimes; gradients stay finite on degenerate sets.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import torch
from _rule_harness import (
    CASES,
    DT,
    Case,
    FixedNoiseOps,
    assert_within,
    c,
    make_attrs,
    make_ctx,
    make_params,
    run_rule,
)

from absnet.backends.torch.ops import TorchOps
from absnet.domains.box import Box
from absnet.domains.linear import Backward, InputSet, LinearValue, bounds, lower_bound
from absnet.ir.domains import ANALYSES, Analysis
from absnet.transformers._zono import deep_loss
from absnet.transformers.registry import RULES, load_rules

load_rules()
N = 2
SAMPLES = 1000
ROWS = 3  # random objective rows Λ
CROWN = ANALYSES["CROWN"]
SETUPS: dict[str, Analysis] = {
    "CROWN": CROWN,
    "CROWN_IBP": ANALYSES["CROWN_IBP"],
    "FastLin": ANALYSES["FastLin"],
    "zero_lb": replace(CROWN, slope="zero_lb"),
    "one_lb": replace(CROWN, slope="one_lb"),
}
ACTIVATIONS = ("ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softplus", "ELU")
#: ops whose rule reads intermediate bounds (so the analysis matters)
RELAXED = (*ACTIVATIONS, "MaxPool2d", "Concretize")
#: ops whose rule is an exact affine map
AFFINE = ("Linear", "Conv2d", "Normalize", "BatchNorm1d", "BatchNorm2d", "AvgPool2d", "AdaptiveAvgPool2d",
          "Flatten", "Reshape", "Add", "Concat", "Dropout")
LINEAR_CASES = [case for case in CASES if (case.op, "linear") in RULES]
NODE = "n7"  # make_ctx's node id
pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny tensors (tests/conftest.py)


# --------------------------------------------------------------------------- inputs


def regime_box(shape: tuple[int, ...], g: torch.Generator, ties: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds (N, *shape) mixing regimes per element: centres at scales 0.3/2/20, widths 0, 1e-7,
    up to 1 and up to 6; ``ties``: a quarter of the lower bounds rounded to integers (MaxPool ties)."""
    full = (N, *shape)
    pick = lambda vals: torch.tensor(vals, dtype=DT)[torch.randint(0, len(vals), full, generator=g)]  # noqa: E731
    center = torch.randn(full, generator=g, dtype=DT) * pick([0.3, 2.0, 20.0])
    scale = pick([0.0, 1e-7, 1.0, 6.0])
    width = torch.where(scale > 1e-3, scale * torch.rand(full, generator=g, dtype=DT), scale)
    lo = center - width / 2
    if ties:
        lo = torch.where(torch.rand(full, generator=g, dtype=DT) < 0.25, lo.round(), lo)
    return lo, lo + width


def sample_box(lo: torch.Tensor, hi: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    """s points (s, N, *shape) of [lo, hi], the first half vertices."""
    u = torch.rand((s, *lo.shape), generator=g, dtype=DT)
    u[: s // 2] = u[: s // 2].round()
    return lo + (hi - lo) * u


def affine_image(src: LinearValue, m: torch.Tensor, b: torch.Tensor, shape: tuple[int, ...]) -> LinearValue:
    """The linear value reshape(M·z + b) over the source z, with an exact backward and IBP's box."""
    n, k = m.shape

    def back(ops: Any, lam: torch.Tensor, bw: Backward) -> tuple[list[Any], Any]:
        flat = lam.reshape(lam.shape[0], lam.shape[1], n)
        return [(flat @ m).reshape(lam.shape[0], lam.shape[1], *src.shape)], flat @ b

    mid, rad = src.box.center.reshape(-1, k), src.box.radius.reshape(-1, k)
    box = Box((mid @ m.T + b).reshape(-1, *shape), (rad @ m.abs().T).reshape(-1, *shape))
    return LinearValue(shape, box, src.analysis, (src,), back, node="pre", op="Linear")


def make_linear_inputs(case: Case, flavor: str, analysis: Analysis, g: torch.Generator,
                       ops: TorchOps) -> tuple[list[LinearValue], list[torch.Tensor]]:
    """Abstract inputs and SAMPLES concrete points per input ((S, N, *s), matching draws)."""
    if flavor == "source":
        xs, pts = [], []
        for s in case.shapes:
            lo, hi = regime_box(tuple(s), g)
            xs.append(LinearValue.from_set(InputSet(lo, hi), analysis, ops))
            pts.append(sample_box(lo, hi, SAMPLES, g))
        return xs, pts
    k = 5
    lo, hi = regime_box((k,), g)
    lo, hi = lo / 4, hi / 4  # keep the images' ranges moderate: both signs and saturation occur
    src = LinearValue.from_set(InputSet(lo, hi), analysis, ops)
    z = sample_box(lo, hi, SAMPLES, g)
    xs, pts = [], []
    for s in case.shapes:
        n = math.prod(s)
        m = torch.randn(n, k, generator=g, dtype=DT) * 1.5 / math.sqrt(k)
        b = torch.randn(n, generator=g, dtype=DT) * 0.5
        xs.append(affine_image(src, m, b, tuple(s)))
        pts.append((z @ m.T + b).reshape(SAMPLES, N, *s))
    return xs, pts


def objective_value(lam: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Λ·y (S, N, R) for Λ (B, R, *s) (B = 1: shared by the batch, else per example) and points y (S, N, *s)."""
    lam = lam.flatten(2).expand(y.shape[1], -1, -1)
    return torch.einsum("nrk,snk->snr", lam, y.flatten(2))


# --------------------------------------------------------------------------- one rule, end to end


def _point_params(case: Case, params: dict[str, Any], xs: list[LinearValue], training: bool) -> dict[str, Any]:
    if case.op.startswith("BatchNorm") and training:  # the rule uses the IBP centre's batch statistics
        axes = (0,) if len(case.shapes[0]) == 1 else (0, 2, 3)
        center = xs[0].box.center
        return dict(params, running_mean=center.mean(axes), running_var=center.var(axes, unbiased=False))
    return params


def run_case(case: Case, flavor: str, analysis: Analysis, training: bool, seed: str) -> dict[str, Any]:
    """Run the linear rule of ``case`` and the point rule on samples; returns what the checks need."""
    g = torch.Generator().manual_seed(zlib.crc32(seed.encode()))
    attrs = make_attrs(case.op, case.attrs)
    params = make_params(case.op, case.shapes[0], attrs, g)
    noise = torch.rand(N, *case.shapes[0], generator=g, dtype=DT)
    ops = FixedNoiseOps(noise, torch.Generator().manual_seed(3))
    xs, pts = make_linear_inputs(case, flavor, analysis, g, ops)
    ctx = make_ctx(case, ops, params, analysis, training, set_buffer=lambda *_: None)
    out = run_rule(case.op, "linear", ctx, *xs)
    point_training = training and not case.op.startswith("BatchNorm")
    pctx = make_ctx(case, ops, _point_params(case, params, xs, training), ANALYSES["Point"], point_training)
    y = run_rule(case.op, "point", pctx, *[p.reshape(SAMPLES * N, *p.shape[2:]) for p in pts])
    return {"ops": ops, "xs": xs, "out": out, "y": y.reshape(SAMPLES, N, *y.shape[1:]), "g": g, "ctx": ctx}


def _modes(case: Case) -> tuple[bool, ...]:
    return (False, True) if case.op in ("Dropout", "BatchNorm1d", "BatchNorm2d") else (False,)


def _sound_params() -> Iterator[Any]:
    for case in LINEAR_CASES:
        setups = list(SETUPS) if case.op in RELAXED else ["CROWN", "CROWN_IBP"]
        for flavor in ("source", "mixed"):
            for setup in setups:
                for training in _modes(case):
                    mode = "train" if training else "eval"
                    marks: list = []
                    yield pytest.param(case, flavor, setup, training, id=f"{case.id}-{flavor}-{setup}-{mode}",
                                       marks=marks)


@pytest.mark.parametrize(("case", "flavor", "setup", "training"), list(_sound_params()))
def test_linear_rule_is_sound_by_sampling(case: Case, flavor: str, setup: str, training: bool) -> None:
    r = run_case(case, flavor, SETUPS[setup], training, f"{case.id}{flavor}{setup}{training}")
    ops, out, y, g = r["ops"], r["out"], r["y"], r["g"]
    what = f"{case.id} on linear ({flavor}, {setup})"
    want = {"box": Box, "linear": LinearValue}[RULES[(case.op, "linear")].out]
    assert isinstance(out, want), f"{what} returned {type(out).__name__}"
    if isinstance(out, Box):  # Concretize
        assert_within(y, out.lower(ops), out.upper(ops), what)
        return
    assert out.shape == tuple(y.shape[2:])
    lo, hi = bounds(ops, out)
    assert torch.isfinite(lo).all() and torch.isfinite(hi).all()
    assert_within(y, lo, hi, f"{what}: back-substituted bounds")
    for batch in (1, N):
        lam = torch.randn(batch, ROWS, *out.shape, generator=g, dtype=DT)
        lb = lower_bound(ops, out, lam)
        assert lb.shape == (N, ROWS)
        assert_within(objective_value(lam, y), lb, torch.full_like(lb, math.inf), f"{what}: Λ·y, B={batch}")
    assert_within(y, out.box.lower(ops), out.box.upper(ops), f"{what}: box")


@pytest.mark.parametrize("case", [k for k in LINEAR_CASES if k.op not in AFFINE + RELAXED], ids=lambda k: k.id)
def test_linear_directives_keep_the_bounds(case: Case) -> None:
    r = run_case(case, "mixed", CROWN, False, case.id)
    if case.op == "Concretize":
        lo, hi = bounds(r["ops"], r["xs"][0])
        torch.testing.assert_close(r["out"].lower(r["ops"]), lo)
        torch.testing.assert_close(r["out"].upper(r["ops"]), hi)
    else:
        assert r["out"] is r["xs"][0], f"{case.id} on a linear value should be the identity"
    if case.op == "DeepLoss":  # records DiffAI's regulariser on the back-substituted (CROWN) bounds
        (bw, loss), = r["ctx"].aux_losses
        lo, hi = bounds(r["ops"], r["xs"][0])
        assert bw == case.attrs.get("bw", 0.01)
        torch.testing.assert_close(loss, deep_loss(r["ops"], lo, hi))


# --------------------------------------------------------------------------- exactness


def _exact_params() -> Iterator[Any]:
    for case in LINEAR_CASES:
        if case.op in AFFINE:
            for training in _modes(case):
                marks: list = []
                yield pytest.param(case, training, id=f"{case.id}-{'train' if training else 'eval'}", marks=marks)


@pytest.mark.parametrize(("case", "training"), list(_exact_params()))
def test_affine_linear_rule_backward_is_exact(case: Case, training: bool) -> None:
    r = run_case(case, "source", CROWN, training, f"exact{case.id}{training}")
    ops, out, xs, g = r["ops"], r["out"], r["xs"], r["g"]
    if case.op == "Dropout" and not training:
        assert out is xs[0]
        return
    assert tuple(out.inputs) == tuple(xs)
    # arbitrary points, not only inside the boxes: the map itself must be the op
    pts = [torch.randn(N, *s, generator=g, dtype=DT) * 3 for s in case.shapes]
    pctx = make_ctx(case, ops, _point_params(case, r["ctx"].params, xs, training), ANALYSES["Point"],
                    training and case.op == "Dropout")
    y = run_rule(case.op, "point", pctx, *pts)
    for batch in (1, N):
        lam = torch.randn(batch, ROWS, *out.shape, generator=g, dtype=DT)
        in_lams, const = out.backward(ops, lam, Backward())
        got = sum(objective_value(il, p[None])[0] for il, p in zip(in_lams, pts, strict=True))
        if const is not None:
            got = got + const
        want = objective_value(lam, y[None])[0]
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # one exact affine layer over boxes: IBP's box and back-substitution agree
    lo, hi = bounds(ops, out)
    torch.testing.assert_close(lo, out.box.lower(ops), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(hi, out.box.upper(ops), rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- ReLU slopes and α


@pytest.mark.parametrize("flavor", ["source", "mixed"])
@pytest.mark.parametrize("setup", ["CROWN", "CROWN_IBP"])
def test_relu_linear_is_sound_for_any_alpha(flavor: str, setup: str) -> None:
    case = c("ReLU", (3, 2, 2))
    r = run_case(case, flavor, SETUPS[setup], False, f"alpha{flavor}{setup}")
    ops, out, y, g = r["ops"], r["out"], r["y"], r["g"]
    for batch in (1, N):
        lam = torch.randn(batch, ROWS, *out.shape, generator=g, dtype=DT)
        collect: dict[str, Any] = {}
        default = lower_bound(ops, out, lam, Backward(collect=collect))
        a_lo, _ = collect[NODE]
        # α equal to the default slopes reproduces the default bound
        same = a_lo.reshape(N, 1, *out.shape).expand(N, ROWS, *out.shape)
        torch.testing.assert_close(lower_bound(ops, out, lam, Backward(alpha={NODE: same})), default)
        for _ in range(3):
            alpha = torch.rand(N, ROWS, *out.shape, generator=g, dtype=DT) * 2 - 0.5
            lb = lower_bound(ops, out, lam, Backward(alpha={NODE: alpha}))
            assert_within(objective_value(lam, y), lb, torch.full_like(lb, math.inf), f"α-CROWN, {flavor}")


# --------------------------------------------------------------------------- MaxPool2d by hand


def _maxpool(lo: list[list[float]], hi: list[list[float]], **attrs: Any) -> LinearValue:
    """The MaxPool2d rule on the source box [lo, hi] of one example with one channel."""
    ops = TorchOps()
    lo_t, hi_t = (torch.tensor([[v]], dtype=DT) for v in (lo, hi))
    x = LinearValue.from_set(InputSet(lo_t, hi_t), CROWN, ops)
    case = c("MaxPool2d", tuple(lo_t.shape[1:]), **attrs)
    return run_rule("MaxPool2d", "linear", make_ctx(case, ops, {}, CROWN, False), x)


def test_maxpool_linear_routes_to_the_largest_lower_bound_and_adds_overlaps() -> None:
    # two overlapping 2x2 windows sharing the middle column; x[0,1] ∈ [5, 6] has the largest lower
    # bound in both; window 0 is decided (5 ≥ 1), window 1 is not (x[1,2] may reach 5.5)
    out = _maxpool([[0, 5, 1], [0, 0, 0]], [[1, 6, 2], [1, 1, 5.5]], kernel_size=2, stride=1)
    ops = TorchOps()
    up = torch.ones(1, 1, 1, 1, 2, dtype=DT)
    (coef,), const = out.backward(ops, up, Backward())
    torch.testing.assert_close(coef, torch.tensor([[[[[0, 2, 0], [0, 0, 0]]]]], dtype=DT))  # y0 + y1 ≥ 2·x01
    assert const is None or (const == 0).all()
    (coef,), const = out.backward(ops, -up, Backward())
    torch.testing.assert_close(coef, torch.tensor([[[[[0, -1, 0], [0, 0, 0]]]]], dtype=DT))  # −y0 ≥ −x01
    torch.testing.assert_close(const, torch.tensor([[-6.0]], dtype=DT))  # −y1 ≥ −max u
    lo, hi = bounds(ops, out)
    torch.testing.assert_close(lo, torch.tensor([[[[5.0, 5.0]]]], dtype=DT))
    torch.testing.assert_close(hi, torch.tensor([[[[6.0, 6.0]]]], dtype=DT))


def test_maxpool_linear_never_selects_padding_and_breaks_ties_to_the_first() -> None:
    # a 1x1 input padded to four 2x2 windows: each holds only the real element, so y = x exactly
    out = _maxpool([[-3.0]], [[-1.0]], kernel_size=2, stride=1, padding=1)
    (coef,), const = out.backward(TorchOps(), torch.ones(1, 1, 1, 2, 2, dtype=DT), Backward())
    torch.testing.assert_close(coef, torch.full((1, 1, 1, 1, 1), 4.0, dtype=DT))
    assert const is None or (const == 0).all()
    # equal lower bounds: the first element is j*; undecided (u of the second is larger)
    out = _maxpool([[1.0, 1.0]], [[1.0, 3.0]], kernel_size=(1, 2))
    (coef,), _ = out.backward(TorchOps(), torch.ones(1, 1, 1, 1, 1, dtype=DT), Backward())
    torch.testing.assert_close(coef, torch.tensor([[[[[1.0, 0.0]]]]], dtype=DT))


# --------------------------------------------------------------------------- lines on dense grids

REGIMES = (
    (-1.0, 1.0), (-3.0, 0.5), (-0.5, 3.0), (0.2, 0.2), (-2.0, -2.0), (0.0, 0.0), (0.0, 1.0), (-1.0, 0.0),
    (-1.0, -1.0 + 1e-7), (-5e-8, 5e-8), (1.0, 1.0 + 1e-7), (5.0, 5.0 + 1e-7), (-5.0, -5.0 + 1e-7),
    (-50.0, 50.0), (-40.0, 10.0), (-10.0, 40.0), (0.0, 50.0), (-50.0, 0.0), (29.0, 31.0), (-31.0, -29.0),
    (30.0, 30.0 + 1e-7), (-30.0, -30.0 + 1e-7), (12.0, 22.0), (-22.0, -12.0), (4.0, 5.0), (-5.0, -4.0),
    (1e-3, 2e-3), (-2e-3, -1e-3), (-1e-3, 1e-3), (-0.1, 7.0), (-7.0, 0.1), (15.0, 45.0), (-45.0, -15.0),
    (-1e-9, 2.0), (-2.0, 1e-9),
)
GRID = 4001
GRID_TOL = 1e-11


def _grid_params() -> Iterator[Any]:
    for case in LINEAR_CASES:
        if case.op in ACTIVATIONS:
            sloped = case.op in ("ReLU", "LeakyReLU")
            slopes = ("adaptive", "same_slope", "zero_lb", "one_lb") if sloped else ("adaptive",)
            for slope in slopes:
                marks: list = []
                yield pytest.param(case, slope, id=f"{case.id}-{slope}", marks=marks)


@pytest.mark.parametrize(("case", "slope"), list(_grid_params()))
def test_activation_lines_hold_on_dense_grids(case: Case, slope: str) -> None:
    """Through the backward with Λ = ±I: a_L·x + b_L ≤ f(x) ≤ a_U·x + b_U on [l, u], per regime."""
    k = len(REGIMES)
    ops = TorchOps()
    lo = torch.tensor([[r[0] for r in REGIMES]], dtype=DT)
    hi = torch.tensor([[r[1] for r in REGIMES]], dtype=DT)
    analysis = replace(CROWN, slope=slope)
    grid_case = c(case.op, (k,), **case.attrs)
    x = LinearValue.from_set(InputSet(lo, hi), analysis, ops)
    out = run_rule(case.op, "linear", make_ctx(grid_case, ops, {}, analysis, False), x)
    eye = torch.eye(k, dtype=DT)
    lam = torch.cat([eye, -eye]).reshape(1, 2 * k, k)
    (coef,), const = out.backward(ops, lam, Backward())
    coef, const = coef.reshape(2 * k, k), const.reshape(2 * k)
    diag = torch.cat([coef[:k].diagonal(), -coef[k:].diagonal()])
    assert (coef[lam.reshape(2 * k, k) == 0] == 0).all(), "an elementwise relaxation must not mix neurons"
    a_lo, a_up, b_lo, b_up = diag[:k], diag[k:], const[:k], -const[k:]
    t = torch.linspace(0, 1, GRID, dtype=DT).reshape(-1, 1)
    pts = torch.cat([lo + (hi - lo) * t, lo, hi, torch.clamp(torch.zeros_like(lo), lo, hi)])
    f = run_rule(case.op, "point", make_ctx(grid_case, ops, {}, ANALYSES["Point"], False), pts)
    below = (a_lo * pts + b_lo - f).max(0).values
    above = (f - a_up * pts - b_up).max(0).values
    bad = [(REGIMES[i], float(below[i]), float(above[i])) for i in range(k)
           if below[i] > GRID_TOL or above[i] > GRID_TOL]
    assert not bad, f"{case.id} ({slope}): lines cross f on (interval, lower excess, upper excess) {bad}"
    assert torch.isfinite(diag).all() and torch.isfinite(const).all()


# --------------------------------------------------------------------------- gradients


def _grad_params() -> Iterator[Any]:
    for case in LINEAR_CASES:
        for kind in ("generic", "degenerate", "zeros"):
            marks: list = []
            yield pytest.param(case, kind, id=f"{case.id}-{kind}", marks=marks)


@pytest.mark.parametrize(("case", "kind"), list(_grad_params()))
def test_linear_rule_gradients_are_finite(case: Case, kind: str) -> None:
    """Training differentiates through the bounds: finite gradients also where u = l (and at 0)."""
    g = torch.Generator().manual_seed(zlib.crc32(f"grad{case.id}{kind}".encode()))
    attrs = make_attrs(case.op, case.attrs)
    params = make_params(case.op, case.shapes[0], attrs, g)
    ops = TorchOps(torch.Generator().manual_seed(0))
    leaves, xs = [], []
    for s in case.shapes:
        lo, hi = regime_box(tuple(s), g, ties=False)  # exact zeros only in the "zeros" kind
        lo = torch.zeros_like(lo) if kind == "zeros" else lo
        width = torch.zeros_like(lo) if kind != "generic" else hi - lo
        lo, width = lo.requires_grad_(True), width.requires_grad_(True)
        leaves += [lo, width]
        xs.append(LinearValue.from_set(InputSet(lo, lo + width), CROWN, ops))
    ctx = make_ctx(case, ops, params, CROWN, True, set_buffer=lambda *_: None)
    out = run_rule(case.op, "linear", ctx, *xs)
    box = out if isinstance(out, Box) else out.box
    lb, ub = (out.lower(ops), out.upper(ops)) if isinstance(out, Box) else bounds(ops, out)
    loss = (ub - lb).sum() + lb.sum() + box.center.sum() + box.radius.sum()
    loss.backward()
    for t in leaves:
        assert t.grad is None or torch.isfinite(t.grad).all(), f"{case.id} ({kind}): non-finite gradient"
