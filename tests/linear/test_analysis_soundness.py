"""Soundness by sampling of every named analysis on random whole networks, in float64.

For each (network, analysis): bounds over the ε-ball (L∞, and L2 via ``norm=2``) ∩ input range and
over explicit boxes must contain the concrete outputs at ≥ 1000 points of the set per example (half
of them vertices for L∞, half on the sphere for L2), plus points found by a few signed-gradient
steps towards each output's and each margin's extremes (random points almost never reach the
extremes in 36 dimensions). ``margin_lower`` must be below f_y − f_j at the same points.

The networks are written as DSL text with seeded random widths, activations and pools (``NETS``);
together they use every layer the linear analyses have to handle (checked by
``test_generated_networks_use_every_layer``). BatchNorm2d runs in eval mode with random running
statistics. Box() and HBox() exist already and validate the harness; an analysis that has no
transformer for some layer (E401) is skipped with the diagnostic as the reason, any other error fails.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from functools import cache

import pytest
import torch

import absnet
from absnet.diagnostics import AbsnetError

pytestmark = pytest.mark.usefixtures("one_thread_module")  # small tensors (tests/conftest.py)

DT = torch.float64
TOL = 1e-9
N = 2  # examples per case
SAMPLES = 1000  # random points per example (plus the centre and the gradient points)
ANALYSES = [
    "Box()", "CROWN_IBP()", "CROWN()", "DeepPoly()", "FastLin()", "WongKolter()", "AlphaCROWN(iters=5)",
    'CROWN(slope="zero_lb")', 'CROWN(slope="one_lb")', 'CROWN(slope="same_slope")',
]
CONTROLS = ["HBox()"]  # an existing zonotope analysis: if it fails here, suspect the harness
REQUIRED_LAYERS = ("Add", "Concat", "Conv2d", "Flatten", "Linear", "ReLU", "LeakyReLU", "Sigmoid", "Tanh",
                   "Softplus", "AvgPool2d", "MaxPool2d", "BatchNorm2d", "Normalize")



# ------------------------------------------------------------------------------- the networks


def _act(r: random.Random) -> str:
    return r.choice(["ReLU()", "LeakyReLU(0.2)", "Sigmoid()", "Tanh()", "Softplus()", "ReLU()"])


def _nets() -> dict[str, str]:
    r = random.Random(2024)
    w = lambda lo, hi: r.randint(lo, hi)  # noqa: E731
    return {
        "conv_residual": f"""network ConvResidual {{
  input [1, 6, 6] range [0, 1]
  Normalize(mean=[{r.uniform(0.3, 0.6):.3f}], std=[{r.uniform(0.2, 0.5):.3f}])
  Conv2d(3, kernel=3, padding=1)  BatchNorm2d()  ReLU()
  Add {{
    branch {{ Conv2d(3, kernel=3, padding=1)  {_act(r)}  Conv2d(3, kernel=3, padding=1) }}
    branch {{ }}
  }}
  ReLU()
  AvgPool2d(2)
  Flatten()
  Linear({w(6, 10)})  {_act(r)}
  Linear(3)
}}""",
        "conv_concat": f"""network ConvConcat {{
  input [2, 5, 5] range [-1, 1]
  Conv2d(3, kernel=2)  LeakyReLU(0.1)
  Concat(axis=1) {{
    branch {{ Conv2d(2, kernel=1)  Sigmoid() }}
    branch {{ AvgPool2d(3, stride=1, padding=1) }}
  }}
  BatchNorm2d()  Tanh()
  Flatten()
  Linear({w(6, 10)})  Softplus()
  Linear(4)
}}""",
        "conv_maxpool": """network ConvMaxPool {
  input [1, 6, 6] range [0, 1]
  Conv2d(2, kernel=3, padding=1)  ReLU()
  MaxPool2d(2)
  Flatten()
  Linear(3)
}""",
        "mlp_branches": f"""network MlpBranches(k={w(6, 10)}) {{
  input [6] range [-1, 1]
  Linear({w(6, 10)})  ReLU()
  Add {{
    branch {{ Linear(8)  {_act(r)}  Linear(k) }}
    branch {{ Linear(k) }}
  }}
  {_act(r)}
  Concat(axis=1) {{
    branch {{ Linear(4)  Tanh() }}
    branch {{ Linear(3)  ReLU() }}
    branch {{ }}
  }}
  Linear(3)
}}""",
        "deep_relu": f"""network DeepRelu {{
  input [5] range [0, 1]
  Linear({w(8, 12)})  ReLU()
  Linear({w(8, 12)})  ReLU()
  Linear({w(8, 12)})  ReLU()
  Linear(4)
}}""",
    }


NETS = _nets()


@cache
def _network(name: str) -> absnet.AbstractNetwork:
    """The compiled network in float64 eval mode, with random BatchNorm affine and running stats."""
    net = absnet.compile_source(NETS[name], seed=len(name))
    g = torch.Generator().manual_seed(len(name) + 1)
    sd = net.state_dict()
    for key, value in sd.items():
        if key.endswith("running_mean"):
            sd[key] = 0.3 * torch.randn(value.shape, generator=g)
        elif key.endswith("running_var"):
            sd[key] = 0.5 + torch.rand(value.shape, generator=g)
        elif ".weight" in key and value.dim() == 1:  # BatchNorm scale
            sd[key] = 0.5 + torch.rand(value.shape, generator=g)
        elif value.dim() == 1 and key.endswith("bias") and f"{key[:-4]}running_mean" in sd:
            sd[key] = 0.2 * torch.randn(value.shape, generator=g)
    net.load_state_dict(sd)
    return net.double().eval()


def _inputs(name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (N, *s) in the range (one coordinate on its boundary), per-example eps in (0, 0.3], labels."""
    net = _network(name)
    g = torch.Generator().manual_seed(seed)
    lo, hi = net.input_range
    x = lo + (hi - lo) * torch.rand(N, *net.input_shape, generator=g, dtype=DT)
    x.view(N, -1)[0, 0] = hi
    eps = 0.3 * (1 - torch.rand(N, generator=g, dtype=DT))  # (0, 0.3]
    y = torch.randint(0, net.output_shape[0], (N,), generator=g)
    return x, eps, y


# ------------------------------------------------------------------------------- the sets


def _linf_set(net, x: torch.Tensor, eps: torch.Tensor):
    lo_r, hi_r = net.input_range
    e = eps.reshape(-1, *([1] * (x.dim() - 1)))
    return (x - e).clamp(lo_r, hi_r), (x + e).clamp(lo_r, hi_r)


def _box_samples(lo: torch.Tensor, hi: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """(n + 1, N, *s): the centre, n/2 random vertices, the rest uniform."""
    u = torch.rand(n, *lo.shape, generator=g, dtype=DT)
    u[: n // 2] = u[: n // 2].round()
    pts = torch.minimum(torch.maximum(lo + (hi - lo) * u, lo), hi)  # vertices exactly at lo or hi
    return torch.cat([((lo + hi) / 2).unsqueeze(0), pts])


def _ball_samples(net, x: torch.Tensor, eps: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """(n, N, *s) points of the L2 ball ∩ range: half on the sphere, half uniform in the ball, then
    clipped to the range. Clipping keeps them in the ball: x is in the range, so clipping only
    moves a coordinate towards x."""
    dims = x[0].numel()
    d = torch.randn(n, *x.shape, generator=g, dtype=DT)
    d = d / d.flatten(2).norm(dim=2).reshape(n, N, *([1] * (x.dim() - 1)))
    r = torch.rand(n, N, generator=g, dtype=DT) ** (1.0 / dims)
    r[: n // 2] = 1.0
    scale = (r * eps).reshape(n, N, *([1] * (x.dim() - 1)))
    return (x + scale * d).clamp(*net.input_range)


def _assert_in_l2_set(net, pts: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> None:
    dist = (pts - x).flatten(2).norm(dim=2)
    assert (dist <= eps * (1 + 1e-12) + 1e-15).all(), "harness: an L2 sample left the ball"
    assert (pts >= net.input_range[0]).all() and (pts <= net.input_range[1]).all(), "harness: left the range"


def _gradient_points(net, x, objective: Callable[[torch.Tensor], torch.Tensor], project, step0, steps: int = 4):
    """Points pushing every objective column (N, Q) both ways: signed-gradient steps from the centre,
    each step projected back into the set by ``project``; returns (2Q·steps, N, *s)."""
    with torch.no_grad():
        q = objective(net(x)).shape[1]
    pts = x.unsqueeze(0).repeat(2 * q, *([1] * x.dim())).clone()
    sign = torch.cat([torch.ones(q), -torch.ones(q)]).to(DT)
    found = []
    for k in range(steps):
        pts.requires_grad_(True)
        out = net(pts.reshape(-1, *x.shape[1:])).reshape(2 * q, N, -1)
        obj = objective(out.reshape(2 * q * N, -1)).reshape(2 * q, N, q)
        picked = obj[torch.arange(2 * q), :, torch.arange(2 * q) % q]  # (2Q, N)
        (grad,) = torch.autograd.grad((sign.unsqueeze(1) * picked).sum(), pts)
        with torch.no_grad():
            pts = project(pts + step0(grad) / (k + 1))
        found.append(pts.detach())
    return torch.cat(found)


def _linf_gradient_points(net, x, lo, hi, objective):
    return _gradient_points(net, x, objective, lambda p: torch.maximum(torch.minimum(p, hi), lo),
                            lambda grad: (hi - lo) * grad.sign())


def _l2_gradient_points(net, x, eps, objective):
    shape = (1, N, *([1] * (x.dim() - 1)))

    def project(p):
        d = p - x
        norm = d.flatten(2).norm(dim=2).reshape(p.shape[0], N, *shape[2:])
        d = d * torch.clamp(eps.reshape(shape) / norm.clamp(min=1e-300), max=1.0)
        return (x + d).clamp(*net.input_range)

    def step(grad):
        norm = grad.flatten(2).norm(dim=2).reshape(grad.shape[0], N, *shape[2:])
        return 2 * eps.reshape(shape) * grad / norm.clamp(min=1e-300)

    return _gradient_points(net, x, objective, project, step)


def _outputs(net, pts: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(pts.reshape(-1, *net.input_shape)).reshape(pts.shape[0], N, -1)


def _margins(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """f_y − f_j (..., N, K) for outputs f (..., N, K)."""
    fy = f.gather(-1, y.reshape(*([1] * (f.dim() - 2)), N, 1).expand(*f.shape[:-1], 1))
    return fy - f


def _margin_objective(y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The margins f_y − f_j as gradient objectives, for outputs (M·N, K) ordered (M, N)."""
    return lambda f: _margins(f.reshape(-1, N, f.shape[-1]), y).reshape(f.shape)


def _assert_certify_agrees(net, x, y, eps, analysis: str, m: torch.Tensor, f_margins: torch.Tensor, **kw) -> None:
    """certify() is "every margin bound j ≠ y is > 0", and never certifies a sampled counterexample."""
    cert = _analyse(net.certify, x, y, eps, domain=analysis, **kw)
    wrong = torch.ones_like(m, dtype=torch.bool).scatter(1, y.reshape(N, 1), False)
    expected = torch.where(wrong, m, torch.inf).min(1).values > 0
    assert torch.equal(cert, expected), f"certify() = {cert.tolist()} but the margin bounds say {expected.tolist()}"
    attacked = torch.where(wrong, f_margins, torch.inf).amin(dim=(0, 2)) <= 0  # (N,): some sample misclassified
    assert not (cert & attacked).any(), f"{analysis} certified an example with a sampled counterexample"


def _assert_contains(lower, upper, f, what: str) -> None:
    below = (lower - f).max().item() if lower is not None else -math.inf
    above = (f - upper).max().item() if upper is not None else -math.inf
    worst = max(below, above)
    assert worst <= TOL, (f"{what}: a sampled value lies outside the bounds by {worst:.3e} "
                          f"(below the lower bound by {below:.3e}, above the upper by {above:.3e})")


def _analyse(fn, *args, **kwargs):
    """Run an analysis; skip when it has no transformer for some layer (E401), with the diagnostic."""
    try:
        with torch.no_grad():
            return fn(*args, **kwargs)
    except AbsnetError as e:
        if any(d.code == "E401" for d in e.diagnostics):
            pytest.skip(f"unsupported here (E401): {e.diagnostics[0].message}")
        raise


# ------------------------------------------------------------------------------- the tests

CASES = [pytest.param(n, a, id=f"{n}-{a}") for n in NETS for a in ANALYSES + CONTROLS]
L2_CASES = [pytest.param(n, a, id=f"{n}-{a}") for n in NETS for a in ANALYSES]


@pytest.mark.parametrize(("name", "analysis"), CASES)
def test_bounds_contain_sampled_outputs(name: str, analysis: str) -> None:
    net = _network(name)
    x, eps, _ = _inputs(name, 1)
    lower, upper = _analyse(net.bounds, x, eps, domain=analysis)  # eps per example
    lo, hi = _linf_set(net, x, eps)
    g = torch.Generator().manual_seed(2)
    pts = torch.cat([_box_samples(lo, hi, SAMPLES, g), _linf_gradient_points(net, x, lo, hi, lambda f: f)])
    assert (pts >= lo).all() and (pts <= hi).all(), "harness: a sample left the box"
    _assert_contains(lower, upper, _outputs(net, pts), f"{analysis} bounds on {name}")


@pytest.mark.parametrize(("name", "analysis"), CASES)
def test_margin_lower_is_below_sampled_margins(name: str, analysis: str) -> None:
    net = _network(name)
    x, _, y = _inputs(name, 3)
    with torch.no_grad():
        y[0] = net(x[:1]).argmax()  # the predicted class: often certifiable, so certify() is exercised
    eps = 0.05 + 0.25 * random.Random(name).random()
    m = _analyse(net.margin_lower, x, y, eps, domain=analysis)
    assert m.shape == (N, net.output_shape[0])
    assert (m.gather(1, y.reshape(N, 1)) == 0).all(), "margin_lower must be 0 at j = y"
    e = torch.full((N,), eps, dtype=DT)
    lo, hi = _linf_set(net, x, e)
    g = torch.Generator().manual_seed(4)
    pts = torch.cat([_box_samples(lo, hi, SAMPLES, g), _linf_gradient_points(net, x, lo, hi, _margin_objective(y))])
    fm = _margins(_outputs(net, pts), y)
    _assert_contains(m, None, fm, f"{analysis} margin_lower on {name}")
    _assert_certify_agrees(net, x, y, eps, analysis, m, fm)


@pytest.mark.parametrize(("name", "analysis"), CASES)
def test_bounds_box_contains_sampled_outputs(name: str, analysis: str) -> None:
    net = _network(name)
    x, _, _ = _inputs(name, 5)
    g = torch.Generator().manual_seed(6)
    width = 0.4 * (net.input_range[1] - net.input_range[0])
    lower_in = x - width * torch.rand(x.shape, generator=g, dtype=DT)
    upper_in = x + width * torch.rand(x.shape, generator=g, dtype=DT)
    lower_in.view(N, -1)[:, 1] = upper_in.view(N, -1)[:, 1]  # a degenerate coordinate
    lower, upper = _analyse(net.bounds_box, lower_in, upper_in, domain=analysis)
    lo = lower_in.clamp(*net.input_range)  # bounds_box intersects the box with the range
    hi = torch.maximum(upper_in.clamp(*net.input_range), lo)
    pts = torch.cat([_box_samples(lo, hi, SAMPLES, g), _linf_gradient_points(net, (lo + hi) / 2, lo, hi, lambda f: f)])
    _assert_contains(lower, upper, _outputs(net, pts), f"{analysis} bounds_box on {name}")


@pytest.mark.parametrize(("name", "analysis"), L2_CASES)
def test_l2_bounds_and_margins_contain_sampled_outputs(name: str, analysis: str) -> None:
    net = _network(name)
    x, eps, y = _inputs(name, 7)
    with torch.no_grad():
        y[0] = net(x[:1]).argmax()
    eps = 2 * eps  # L2 balls are thinner than L∞ balls of the same radius
    lower, upper = _analyse(net.bounds, x, eps, domain=analysis, norm=2)
    m = _analyse(net.margin_lower, x, y, eps, domain=analysis, norm=2)
    g = torch.Generator().manual_seed(8)
    pts = torch.cat([x.unsqueeze(0), _ball_samples(net, x, eps, SAMPLES, g),
                     _l2_gradient_points(net, x, eps, lambda f: f),
                     _l2_gradient_points(net, x, eps, _margin_objective(y))])
    _assert_in_l2_set(net, pts, x, eps)
    f = _outputs(net, pts)
    _assert_contains(lower, upper, f, f"{analysis} L2 bounds on {name}")
    _assert_contains(m, None, _margins(f, y), f"{analysis} L2 margin_lower on {name}")
    _assert_certify_agrees(net, x, y, eps, analysis, m, _margins(f, y), norm=2)


@pytest.mark.parametrize("name", list(NETS))
def test_alpha_crown_margins_are_never_below_crown(name: str) -> None:
    # α-CROWN starts from CROWN's slopes and keeps the best bound seen per objective row
    net = _network(name)
    x, _, y = _inputs(name, 9)
    crown = _analyse(net.margin_lower, x, y, 0.1, domain="CROWN()")
    alpha = _analyse(net.margin_lower, x, y, 0.1, domain="AlphaCROWN(iters=10)")
    worst = (crown - alpha).max().item()
    assert worst <= TOL, f"AlphaCROWN(iters=10) margins are below CROWN()'s by up to {worst:.3e} on {name}"


MLP_REPORT = "network R(d=2, w=16) { input [8] range [0, 1]  repeat d { Linear(w) ReLU() }  Linear(5) }"


def test_report_how_often_crown_beats_ibp() -> None:
    """REPORT ONLY (never fails): on small randomly initialised networks, how often the margin lower
    bounds of CROWN() (and of CROWN_IBP(), FastLin()) are ≥ IBP's (Box()). Run with -s to see them."""
    nets = {name: _network(name) for name in NETS}
    for k, (d, w) in enumerate([(1, 8), (2, 16), (3, 16), (4, 32), (2, 64), (6, 16)]):
        nets[f"mlp d={d} w={w}"] = absnet.compile_source(MLP_REPORT, args={"d": d, "w": w}, seed=k).double().eval()
    totals: dict[str, list[int]] = {}
    lines = []
    for name, net in nets.items():
        g = torch.Generator().manual_seed(11)
        lo_r, hi_r = net.input_range
        x = lo_r + (hi_r - lo_r) * torch.rand(N, *net.input_shape, generator=g, dtype=DT)
        y = torch.randint(0, net.output_shape[0], (N,), generator=g)
        wrong = torch.ones(N, net.output_shape[0], dtype=torch.bool).scatter(1, y.reshape(N, 1), False)
        for eps in (0.01, 0.1, 0.3):
            with torch.no_grad():
                ibp = net.margin_lower(x, y, eps, domain="Box()")
            cells = []
            for analysis in ("CROWN()", "CROWN_IBP()", "FastLin()"):
                try:
                    with torch.no_grad():
                        other = net.margin_lower(x, y, eps, domain=analysis)
                except AbsnetError as e:
                    cells.append(f"{analysis} n/a ({e.diagnostics[0].code})")
                    continue
                better = (other >= ibp - TOL)[wrong]
                gain = (other - ibp)[wrong]
                tot = totals.setdefault(analysis, [0, 0])
                tot[0] += int(better.sum())
                tot[1] += better.numel()
                cells.append(f"{analysis} ≥ IBP {int(better.sum())}/{better.numel()} "
                             f"(median gain {gain.median():+.2e})")
            lines.append(f"{name:16s} eps={eps:<4}  " + "; ".join(cells))
    summary = ", ".join(f"{a}: {t[0]}/{t[1]}" for a, t in totals.items())
    print("\n[report] margin lower bounds vs Box() (IBP) on randomly initialised networks\n"
          + "\n".join(lines) + f"\n[report] margins with analysis ≥ IBP — {summary}")


# ------------------------------------------------------------------------------- the harness


def test_generated_networks_use_every_layer() -> None:
    text = "\n".join(NETS.values())
    missing = [layer for layer in REQUIRED_LAYERS if f"{layer}(" not in text and f"{layer} {{" not in text]
    assert not missing, f"no generated network uses {missing}"
    for name in NETS:
        assert _network(name).output_shape[0] >= 3


def test_harness_reaches_the_exact_extremes_of_an_affine_network() -> None:
    # One Linear layer: Box() is exact over boxes and W x ± eps‖W_j‖₂ is exact over L2 balls inside
    # the range, so the sampled extremes must reach the bounds; otherwise the sampler is too weak to
    # find unsound bounds.
    net = absnet.compile_source("network Aff { input [1, 6, 6] range [-10, 10]  Flatten()  Linear(4) }").double()
    x = torch.rand(N, 1, 6, 6, dtype=DT)
    eps = torch.tensor([0.1, 0.3], dtype=DT)
    lo, hi = _linf_set(net, x, eps)
    lower, upper = net.bounds(x, eps, domain="Box()")
    f = _outputs(net, _linf_gradient_points(net, x, lo, hi, lambda f: f))
    assert (f.min(0).values - lower).abs().max() < 1e-12 and (f.max(0).values - upper).abs().max() < 1e-12
    w = net.state_dict()["layers.1.weight"].to(DT)
    centre = _outputs(net, x.unsqueeze(0))[0]
    radius = eps.reshape(N, 1) * w.norm(dim=1)
    pts = _l2_gradient_points(net, x, eps, lambda f: f)
    _assert_in_l2_set(net, pts, x, eps)
    f = _outputs(net, pts)
    assert (f.min(0).values - (centre - radius)).abs().max() < 1e-9
    assert (f.max(0).values - (centre + radius)).abs().max() < 1e-9


def test_harness_detects_bounds_that_are_slightly_too_tight() -> None:
    net = _network("deep_relu")
    x, eps, _ = _inputs("deep_relu", 1)
    lo, hi = _linf_set(net, x, eps)
    f = _outputs(net, torch.cat([_box_samples(lo, hi, SAMPLES, torch.Generator().manual_seed(0)),
                                 _linf_gradient_points(net, x, lo, hi, lambda f: f)]))
    fmin, fmax = f.min(0).values, f.max(0).values
    _assert_contains(fmin, fmax, f, "the sampled hull itself")
    with pytest.raises(AssertionError, match=r"outside the bounds by 1\.000e-06"):
        _assert_contains(fmin + 1e-6, fmax, f, "too tight")
    with pytest.raises(AssertionError, match=r"above the upper by 1\.000e-06"):
        _assert_contains(None, fmax - 1e-6, f, "too tight")
