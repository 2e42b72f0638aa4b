"""Validation of the Wong & Kolter reference (wk_reference.py) before anything is compared with it.

(a) J and the intermediate bounds are sound: J ≤ min c·f over 2000 sampled points (all box vertices
    included) on random 4→8→8→3 chains, for L∞ boxes and L2 balls, for every lower-slope rule;
(b) J ≤ the optimum of the triangle-relaxation LP (scipy linprog, same intermediate bounds), and J
    EQUALS the optimum of the "parallel" LP where each unstable ReLU is relaxed to the band between
    the two chord-slope lines d·ẑ ≤ z ≤ d·(ẑ − l): that LP is what the dual with α = d solves exactly,
    so the equality pins the reference down to solver precision, not just to an inequality;
(c) with one hidden layer that is stable-active on the whole box, J is the exact minimum of the
    (then affine) objective, for boxes and L2 balls.
The ``ibp=`` variants of the intermediate bounds (CROWN's IBP intersection, CROWN-IBP) are checked
for soundness by the same sampling.

Observation for (b), from the runs of this file (8 random 3→5→5→3 chains, 2 examples each, 4
objective rows each, eps = 0.35; 55 non-zero rows): J did NOT often equal the triangle LP. It was
equal in 4/55, exactly the rows where no unstable neuron receives ν̂ < 0 (so the lower slope α is
never used and J is the same for every α, hence the LP dual's optimum), and strictly below in the
other 51 (median gap 2.6e-2, max 0.36). Whenever α is used, the chord α = u/(u − l) is dual feasible
but not optimal (the optimum is found among α ∈ [0, 1]; the best of the four fixed rules chord/zero/
one/adaptive already reached the LP in 28/55 rows). The test asserts the equality where α is unused;
``test_report_lp_gap`` prints the counts (run with -s).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from wk_reference import (
    DT,
    LOWER_SLOPES,
    chord_slope,
    dual_bound,
    forward,
    intermediate_bounds,
    lower_slope_used,
    margin_objective,
    random_chain,
    wk_bound,
)

pytestmark = pytest.mark.usefixtures("one_thread_module")  # small tensors (tests/conftest.py)

TOL = 1e-9



def _problem(seed: int, sizes=(4, 8, 8, 3), batch: int = 3, eps: float = 0.3, lo: float = -1.0, hi: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    weights, biases = random_chain(sizes, g)
    x0 = lo + (hi - lo) * torch.rand(batch, sizes[0], generator=g, dtype=DT)
    box = ((x0 - eps).clamp(lo, hi), (x0 + eps).clamp(lo, hi))
    y = torch.randint(0, sizes[-1], (batch,), generator=g)
    # spec rows: every margin e_y − e_j, plus ±e_j and two random directions
    eye = torch.eye(sizes[-1], dtype=DT)
    extra = torch.cat([eye, -eye, torch.randn(2, sizes[-1], generator=g, dtype=DT)])
    c = torch.cat([margin_objective(y, sizes[-1]), extra.unsqueeze(0).expand(batch, -1, -1)], dim=1)
    return g, weights, biases, x0, box, c


def _box_samples(box: tuple[torch.Tensor, torch.Tensor], n: int, g: torch.Generator) -> torch.Tensor:
    """(n, B, n0) points of the box: every vertex (when few), n/2 random vertices, the rest uniform."""
    lo, hi = box
    n0 = lo.shape[1]
    u = torch.rand(n, *lo.shape, generator=g, dtype=DT)
    u[: n // 2] = u[: n // 2].round()
    if 2**n0 <= n // 2:
        corners = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n0)), dtype=DT)
        u[: 2**n0] = corners.unsqueeze(1)
    return torch.minimum(torch.maximum(lo + (hi - lo) * u, lo), hi)  # vertices exactly at lo or hi


def _ball_samples(x0: torch.Tensor, eps: float, n: int, g: torch.Generator) -> torch.Tensor:
    """(n, B, n0) points of the L2 ball: half on the sphere, half uniform in the ball."""
    d = torch.randn(n, *x0.shape, generator=g, dtype=DT)
    d = d / d.norm(dim=-1, keepdim=True)
    r = torch.rand(n, x0.shape[0], 1, generator=g, dtype=DT) ** (1.0 / x0.shape[1])
    r[: n // 2] = 1.0
    pts = x0 + eps * r * d
    assert ((pts - x0).norm(dim=-1) <= eps * (1 + 1e-12)).all()
    return pts


def _assert_sound(weights, biases, bnds, c, J, pts):
    f, pre = forward(weights, biases, pts)  # f (n, B, K)
    obj = torch.einsum("bmk,nbk->nbm", c, f)
    worst = (J - obj.min(0).values).max().item()
    assert worst <= TOL, f"J exceeds the sampled minimum of c·f by {worst:.3e}"
    for t, ((lb, ub), z) in enumerate(zip(bnds, pre)):
        below, above = (lb - z).max().item(), (z - ub).max().item()
        assert max(below, above) <= TOL, f"ReLU layer {t}: samples leave [l, u] by {max(below, above):.3e}"


@pytest.mark.parametrize("ibp", ["none", "intersect", "only"])
@pytest.mark.parametrize("lower_slope", LOWER_SLOPES)
@pytest.mark.parametrize("seed", range(3))
def test_dual_bound_is_below_sampled_minimum_on_boxes(seed: int, lower_slope: str, ibp: str) -> None:
    g, weights, biases, _, box, c = _problem(seed)
    J, bnds = wk_bound(weights, biases, c, box=box, lower_slope=lower_slope, ibp=ibp)
    unstable = sum(int(((lb < 0) & (ub > 0)).sum()) for lb, ub in bnds)
    assert unstable > 0, "the problem should have unstable neurons to exercise the relaxation"
    _assert_sound(weights, biases, bnds, c, J, _box_samples(box, 2000, g))


@pytest.mark.parametrize("ibp", ["none", "intersect", "only", "only-hull"])
@pytest.mark.parametrize("lower_slope", LOWER_SLOPES)
@pytest.mark.parametrize("seed", range(3))
def test_dual_bound_is_below_sampled_minimum_on_l2_balls(seed: int, lower_slope: str, ibp: str) -> None:
    g, weights, biases, x0, _, c = _problem(seed, eps=0.5)
    eps = torch.tensor([0.5, 0.2, 0.7], dtype=DT)  # per example
    mode, _, ball_ibp = ibp.partition("-")
    J, bnds = wk_bound(weights, biases, c, ball=(x0, eps), lower_slope=lower_slope, ibp=mode,
                       ball_ibp=ball_ibp or "exact")
    pts = torch.cat([_ball_samples(x0[i : i + 1], float(eps[i]), 2000, g) for i in range(3)], dim=1)
    _assert_sound(weights, biases, bnds, c, J, pts)


def test_chord_slope_matches_the_definition() -> None:
    lb = torch.tensor([-2.0, 0.0, -1.0, 1.0, -3.0], dtype=DT)
    ub = torch.tensor([2.0, 1.0, 0.0, 2.0, 1.0], dtype=DT)
    assert torch.equal(chord_slope(lb, ub), torch.tensor([0.5, 1.0, 0.0, 1.0, 0.25], dtype=DT))


# ---------------------------------------------------------------------------------------- (b) LPs


def lp_minimum(weights, biases, bnds, c_row: np.ndarray, lo: np.ndarray, hi: np.ndarray, relaxation: str) -> float:
    """min c·f over the relaxed network: x ∈ [lo, hi], ẑ_{t+1} = W_t z_t + b_t, and per ReLU neuron
    z = 0 (u ≤ 0), z = ẑ (l ≥ 0), or for unstable ones the triangle {z ≥ 0, z ≥ ẑ, z ≤ d(ẑ − l)}
    (``relaxation="triangle"``) or the band {d ẑ ≤ z ≤ d(ẑ − l)} (``"parallel"``)."""
    W = [w.numpy() for w in weights]
    b = [v.numpy() for v in biases]
    n0 = W[0].shape[1]
    hidden = [w.shape[0] for w in W[:-1]]
    # variable layout: x, then (ẑ_t, z_t) per hidden layer
    offs, pos = [], n0
    for n in hidden:
        offs.append((pos, pos + n))
        pos += 2 * n
    nv = pos
    A_eq, b_eq, A_ub, b_ub = [], [], [], []
    for t, n in enumerate(hidden):
        zh, _ = offs[t]
        for j in range(n):
            row = np.zeros(nv)
            row[zh + j] = 1.0
            if t == 0:
                row[:n0] -= W[0][j]
            else:
                pz = offs[t - 1][1]
                row[pz : pz + W[t].shape[1]] -= W[t][j]
            A_eq.append(row)
            b_eq.append(b[t][j])
        lb, ub = (v[0].numpy() for v in bnds[t])
        for j in range(n):
            zh_j, z_j = offs[t][0] + j, offs[t][1] + j
            if ub[j] <= 0 or lb[j] >= 0:
                row = np.zeros(nv)
                row[z_j] = 1.0
                if lb[j] >= 0:
                    row[zh_j] = -1.0
                A_eq.append(row)
                b_eq.append(0.0)
                continue
            d = ub[j] / (ub[j] - lb[j])
            upper = np.zeros(nv)  # z − d ẑ ≤ −d l
            upper[z_j], upper[zh_j] = 1.0, -d
            A_ub.append(upper)
            b_ub.append(-d * lb[j])
            if relaxation == "triangle":
                ge0 = np.zeros(nv)  # −z ≤ 0
                ge0[z_j] = -1.0
                ge_zh = np.zeros(nv)  # ẑ − z ≤ 0
                ge_zh[zh_j], ge_zh[z_j] = 1.0, -1.0
                A_ub += [ge0, ge_zh]
                b_ub += [0.0, 0.0]
            else:
                band = np.zeros(nv)  # d ẑ − z ≤ 0
                band[zh_j], band[z_j] = d, -1.0
                A_ub.append(band)
                b_ub.append(0.0)
    cost = np.zeros(nv)
    last = offs[-1][1]
    cost[last : last + hidden[-1]] = c_row @ W[-1]
    bounds = [(float(a), float(z)) for a, z in zip(lo, hi)] + [(None, None)] * (nv - n0)
    res = linprog(cost, A_ub=np.array(A_ub) if A_ub else None, b_ub=np.array(b_ub) if b_ub else None,
                  A_eq=np.array(A_eq), b_eq=np.array(b_eq), bounds=bounds, method="highs")
    assert res.status == 0, res.message
    return float(res.fun + c_row @ b[-1])


def _lp_cases():
    """(weights, biases, bounds, c_row, lo, hi, {rule: J}, lower slope used) for one example and row."""
    for seed in range(8):
        _, weights, biases, _, box, c = _problem(100 + seed, sizes=(3, 5, 5, 3), batch=2, eps=0.35)
        bnds = intermediate_bounds(weights, biases, box=box)
        J = {rule: dual_bound(weights, biases, bnds, c, box=box, lower_slope=rule) for rule in LOWER_SLOPES}
        used = lower_slope_used(weights, biases, bnds, c)
        for i in range(2):
            one = [(lb[i : i + 1], ub[i : i + 1]) for lb, ub in bnds]
            for r in (0, 1, 3, 9):  # two margins (one is the zero row when y = 0/1), +e_0, a random row
                Jr = {rule: float(v[i, r]) for rule, v in J.items()}
                yield weights, biases, one, c[i, r].numpy(), box[0][i].numpy(), box[1][i].numpy(), Jr, bool(used[i, r])


def test_dual_bound_is_below_the_triangle_lp_and_equals_the_parallel_lp() -> None:
    for weights, biases, bnds, c_row, lo, hi, J, used in _lp_cases():
        tri = lp_minimum(weights, biases, bnds, c_row, lo, hi, "triangle")
        par = lp_minimum(weights, biases, bnds, c_row, lo, hi, "parallel")
        for rule, j in J.items():  # every α ∈ [0, 1] is dual feasible for the triangle LP
            assert j <= tri + 1e-7, f"J ({rule} lower slope) = {j} is above the triangle LP optimum {tri}"
        assert abs(J["chord"] - par) <= 1e-7 * (1 + abs(par)), f"J = {J['chord']} ≠ parallel LP optimum {par}"
        if not used:  # α never multiplies anything: J(α) is constant in α, so it is the LP dual's optimum
            assert abs(J["chord"] - tri) <= 1e-7 * (1 + abs(tri)), f"J = {J['chord']} ≠ triangle LP optimum {tri}"


def test_report_lp_gap() -> None:
    """REPORT (never fails): how often J equals the triangle LP optimum; run with -s to see it."""
    rows = []
    for weights, biases, bnds, c_row, lo, hi, J, used in _lp_cases():
        if not np.any(c_row):
            continue  # the zero margin row j = y: trivially 0 = 0
        tri = lp_minimum(weights, biases, bnds, c_row, lo, hi, "triangle")
        rows.append((tri - J["chord"], tri - max(J.values()), used))
    gap = torch.tensor([r[0] for r in rows])
    best = torch.tensor([r[1] for r in rows])
    used = torch.tensor([r[2] for r in rows])
    eq = gap.abs() <= 1e-7
    print(f"\n[report] J (chord lower slope) vs triangle LP over {len(rows)} non-zero objective rows: "
          f"equal in {int(eq.sum())} ({int((eq & ~used).sum())} of them with the lower slope unused, "
          f"{int((eq & used).sum())} with it used); strictly below in {int((~eq).sum())}; "
          f"max gap {gap.max().item():.3e}, median gap {gap.median().item():.3e}. "
          f"The best of the chord/zero/one/adaptive rules reaches the LP in {int((best.abs() <= 1e-7).sum())}.")


# ------------------------------------------------------------------------- (c) exact when affine


def _stable_active_problem(seed: int, eps: float):
    g = torch.Generator().manual_seed(seed)
    weights, biases = random_chain((4, 8, 3), g)
    x0 = 2 * torch.rand(3, 4, generator=g, dtype=DT) - 1
    # biases large enough that the hidden layer is active on the whole ε-neighbourhood of [-1, 1]^4
    biases[0] = weights[0].abs().sum(1) * (1 + eps) + 0.1
    return g, weights, biases, x0


@pytest.mark.parametrize("seed", range(3))
def test_dual_bound_is_exact_when_the_hidden_layer_is_stably_active_on_a_box(seed: int) -> None:
    g, weights, biases, x0 = _stable_active_problem(seed, 0.3)
    box = ((x0 - 0.3).clamp(-1, 1), (x0 + 0.25).clamp(-1, 1))
    c = torch.randn(3, 5, 3, generator=g, dtype=DT)
    J, bnds = wk_bound(weights, biases, c, box=box)
    assert (bnds[0][0] > 0).all()
    A = c @ weights[1] @ weights[0]  # (B, m, n0)
    const = c @ (weights[1] @ biases[0] + biases[1])
    exact = const + torch.minimum(A * box[0].unsqueeze(1), A * box[1].unsqueeze(1)).sum(-1)
    torch.testing.assert_close(J, exact, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_dual_bound_is_exact_when_the_hidden_layer_is_stably_active_on_an_l2_ball(seed: int) -> None:
    g, weights, biases, x0 = _stable_active_problem(seed, 0.3)
    c = torch.randn(3, 5, 3, generator=g, dtype=DT)
    J, bnds = wk_bound(weights, biases, c, ball=(x0, 0.3))
    assert (bnds[0][0] > 0).all()
    A = c @ weights[1] @ weights[0]
    exact = c @ (weights[1] @ biases[0] + biases[1]) + (A * x0.unsqueeze(1)).sum(-1) - 0.3 * A.norm(dim=-1)
    torch.testing.assert_close(J, exact, rtol=0, atol=1e-12)


def test_first_layer_bounds_are_exact_interval_bounds() -> None:
    _, weights, biases, _, box, _ = _problem(7)
    (lb, ub), _ = intermediate_bounds(weights, biases, box=box)
    mid, rad = (box[0] + box[1]) / 2, (box[1] - box[0]) / 2
    centre = mid @ weights[0].T + biases[0]
    torch.testing.assert_close(lb, centre - rad @ weights[0].abs().T, rtol=0, atol=1e-12)
    torch.testing.assert_close(ub, centre + rad @ weights[0].abs().T, rtol=0, atol=1e-12)


def test_ibp_options_agree_on_the_first_layer_where_both_bounds_are_exact() -> None:
    _, weights, biases, _, box, _ = _problem(5, sizes=(4, 8, 8, 8, 3))
    first = [intermediate_bounds(weights, biases, box=box, ibp=ibp)[0] for ibp in ("none", "intersect", "only")]
    for lb, ub in first[1:]:
        torch.testing.assert_close(lb, first[0][0], rtol=0, atol=1e-12)
        torch.testing.assert_close(ub, first[0][1], rtol=0, atol=1e-12)


def test_dual_bound_with_no_unstable_neuron_matches_its_own_stable_active_form() -> None:
    # a degenerate box (a point): every bound collapses and J equals c·f(x0)
    _, weights, biases, x0, _, c = _problem(3)
    J, _ = wk_bound(weights, biases, c, box=(x0, x0))
    f, _ = forward(weights, biases, x0)
    torch.testing.assert_close(J, torch.einsum("bmk,bk->bm", c, f), rtol=0, atol=1e-12)


def test_dual_bound_rejects_ambiguous_input_sets() -> None:
    _, weights, biases, x0, box, c = _problem(0)
    with pytest.raises(ValueError):
        dual_bound(weights, biases, intermediate_bounds(weights, biases, box=box), c, box=box, ball=(x0, 0.1))
