"""absnet's linear-relaxation analyses against the independent Wong & Kolter reference (wk_reference.py).

A random dense ReLU chain is written as DSL source (``chain_to_absnet``), compiled, and given the
reference's weights (``load_chain``). The reference computes every ReLU layer's l, u with its own
dual recursion (each neuron as objective ±e_j) and then J. FastLin()/WongKolter() back-substitute
with the same chord slope on both sides of every unstable ReLU and do not intersect intermediate
bounds with IBP boxes, so in float64 their bounds must equal J to 1e-9. The other analyses are
compared with the reference configured like them (``ANALYSES`` below: the lower-slope rule and how
IBP enters the intermediate bounds — absnet's CROWN intersects back-substituted intermediate bounds
with IBP's box, DeepPoly and FastLin do not, CROWN_IBP uses IBP's alone; absnet/ir/domains.py).
An intersection changes the intermediate bounds and so the slopes: it may move the final bound
either way, which is why the reference has to model it rather than be compared one-sidedly.

Objectives: the margins e_y − e_j (``margin_lower``), ±e_j (``bounds``), and the bounds of every
hidden layer's pre-activations (``bounds`` of the chain cut after that layer's Linear).
"""

from __future__ import annotations

import pytest
import torch
from wk_reference import (
    DT,
    chain_to_absnet,
    dual_bound,
    forward,
    intermediate_bounds,
    load_chain,
    margin_objective,
    random_chain,
    wk_bound,
)

import absnet

pytestmark = pytest.mark.usefixtures("one_thread_module")  # small tensors (tests/conftest.py)

ATOL = 1e-9
SIZES = (5, 10, 10, 4)
RANGE = (-1.0, 1.0)
# analysis → the reference's (lower_slope, ibp) that reproduce it
ANALYSES = {
    "FastLin()": ("chord", "none"),
    "WongKolter()": ("chord", "none"),
    "DeepPoly()": ("adaptive", "none"),
    "CROWN()": ("adaptive", "intersect"),
    'CROWN(slope="same_slope")': ("chord", "intersect"),
    'CROWN(slope="zero_lb")': ("zero", "intersect"),
    'CROWN(slope="one_lb")': ("one", "intersect"),
    "CROWN_IBP()": ("adaptive", "only"),
    'CROWN_IBP(slope="same_slope")': ("chord", "only"),
}



def _ref(analysis: str) -> dict[str, str]:
    lower_slope, ibp = ANALYSES[analysis]
    return {"lower_slope": lower_slope, "ibp": ibp}


def _case(seed: int, sizes=SIZES, input_range=RANGE, batch: int = 3, on_boundary: bool = True):
    g = torch.Generator().manual_seed(seed)
    weights, biases = random_chain(sizes, g)
    x = -1 + 2 * torch.rand(batch, sizes[0], generator=g, dtype=DT)
    if on_boundary:  # one coordinate on the range boundary, so that clipping matters
        x[0, 0] = input_range[0]
    eps = 0.05 + 0.25 * torch.rand(batch, generator=g, dtype=DT)
    y = torch.randint(0, sizes[-1], (batch,), generator=g)
    return weights, biases, x, eps, y


def _compile(weights, biases, input_range=RANGE) -> absnet.AbstractNetwork:
    net = absnet.compile_source(chain_to_absnet(weights, biases, input_range))
    return load_chain(net.double().eval(), weights, biases)


def _box(x: torch.Tensor, eps: torch.Tensor, input_range=RANGE):
    e = eps.reshape(-1, 1)
    return (x - e).clamp(*input_range), (x + e).clamp(*input_range)


def _assert_equal(ours: torch.Tensor, ref: torch.Tensor, what: str, hint: str = "") -> None:
    diff = ours - ref
    worst = diff.abs().max().item()
    assert worst <= ATOL, (
        f"{what}: absnet and the W&K reference differ by up to {worst:.3e} "
        f"(absnet − reference ranges over [{diff.min().item():.3e}, {diff.max().item():.3e}] "
        "for lower bounds; > 0: absnet tighter, < 0: absnet looser). "
        "Either side may be wrong; a difference means the two compute different intermediate bounds or slopes."
        + (f" {hint}" if hint else "")
    )


@pytest.mark.parametrize("seed", range(3))
def test_chain_source_compiles_to_the_same_concrete_network(seed: int) -> None:
    weights, biases, x, _, _ = _case(seed)
    net = _compile(weights, biases)
    assert set(net.state_dict()) == {f"layers.{2 * t}.{p}" for t in range(3) for p in ("weight", "bias")}
    with torch.no_grad():
        torch.testing.assert_close(net(x), forward(weights, biases, x)[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("analysis", list(ANALYSES))
@pytest.mark.parametrize("seed", range(3))
def test_margin_lower_equals_the_reference_dual_bound(analysis: str, seed: int) -> None:
    weights, biases, x, eps, y = _case(seed)
    net = _compile(weights, biases)
    J, bnds = wk_bound(weights, biases, margin_objective(y, SIZES[-1]), box=_box(x, eps), **_ref(analysis))
    assert sum(int(((lb < 0) & (ub > 0)).sum()) for lb, ub in bnds) > 0, "no unstable neuron: the case tests nothing"
    with torch.no_grad():
        ours = net.margin_lower(x, y, eps, domain=analysis)
    _assert_equal(ours, J, f"{analysis} margin_lower")


@pytest.mark.parametrize("analysis", list(ANALYSES))
@pytest.mark.parametrize("seed", range(3))
def test_output_bounds_equal_the_reference_dual_bound(analysis: str, seed: int) -> None:
    weights, biases, x, eps, _ = _case(seed)
    net = _compile(weights, biases)
    eye = torch.eye(SIZES[-1], dtype=DT)
    J, _ = wk_bound(weights, biases, torch.cat([eye, -eye]), box=_box(x, eps), **_ref(analysis))
    with torch.no_grad():
        lower, upper = net.bounds(x, eps, domain=analysis)
    _assert_equal(lower, J[:, : SIZES[-1]], f"{analysis} lower bounds")
    _assert_equal(-upper, J[:, SIZES[-1] :], f"{analysis} upper bounds (negated)")


@pytest.mark.parametrize("analysis", list(ANALYSES))
def test_bounds_of_every_hidden_layer_equal_the_reference(analysis: str) -> None:
    # the chain cut after its t-th hidden Linear: absnet back-substitutes at the output (it never
    # intersects output bounds with IBP), over the earlier layers' intermediate bounds as the
    # analysis defines them — the reference's J over its own intermediate bounds of those layers
    weights, biases, x, eps, _ = _case(11)
    box = _box(x, eps)
    ref = intermediate_bounds(weights, biases, box=box, **_ref(analysis))
    for t in range(len(weights) - 1):
        n = weights[t].shape[0]
        eye = torch.eye(n, dtype=DT)
        J = dual_bound(weights[: t + 1], biases[: t + 1], ref[:t], torch.cat([eye, -eye]), box=box,
                       lower_slope=ANALYSES[analysis][0])
        prefix = _compile(weights[: t + 1], biases[: t + 1])
        with torch.no_grad():
            lower, upper = prefix.bounds(x, eps, domain=analysis)
        _assert_equal(lower, J[:, :n], f"{analysis} lower bounds of ReLU layer {t}'s pre-activations")
        _assert_equal(-upper, J[:, n:], f"{analysis} upper bounds of ReLU layer {t}'s pre-activations (negated)")


@pytest.mark.parametrize("analysis", list(ANALYSES))
def test_bounds_box_equals_the_reference_dual_bound(analysis: str) -> None:
    weights, biases, x, _, _ = _case(5)
    net = _compile(weights, biases)
    g = torch.Generator().manual_seed(5)
    lower_in = x - 0.3 * torch.rand(x.shape, generator=g, dtype=DT)
    upper_in = x + 0.3 * torch.rand(x.shape, generator=g, dtype=DT)
    box = (lower_in.clamp(*RANGE), upper_in.clamp(*RANGE))  # bounds_box intersects with the range too
    eye = torch.eye(SIZES[-1], dtype=DT)
    J, _ = wk_bound(weights, biases, torch.cat([eye, -eye]), box=box, **_ref(analysis))
    with torch.no_grad():
        lower, upper = net.bounds_box(lower_in, upper_in, domain=analysis)
    _assert_equal(lower, J[:, : SIZES[-1]], f"{analysis} bounds_box lower")
    _assert_equal(-upper, J[:, SIZES[-1] :], f"{analysis} bounds_box upper (negated)")


@pytest.mark.parametrize("analysis", list(ANALYSES))
@pytest.mark.parametrize("seed", range(2))
def test_l2_bounds_equal_the_reference_dual_bound(analysis: str, seed: int) -> None:
    # a range far wider than the balls, so that the L2 ball ∩ range is the ball itself
    wide = (-100.0, 100.0)
    weights, biases, x, eps, y = _case(seed, input_range=wide, on_boundary=False)
    net = _compile(weights, biases, wide)
    eye = torch.eye(SIZES[-1], dtype=DT)
    J, _ = wk_bound(weights, biases, torch.cat([eye, -eye]), ball=(x, eps), **_ref(analysis))
    Jm, _ = wk_bound(weights, biases, margin_objective(y, SIZES[-1]), ball=(x, eps), **_ref(analysis))
    with torch.no_grad():
        lower, upper = net.bounds(x, eps, domain=analysis, norm=2)
        margins = net.margin_lower(x, y, eps, domain=analysis, norm=2)
    hint = ("The reference's IBP over an L2 ball starts with the exact first layer W x0 + b ± eps·‖W_j‖₂ "
            "(crown_ibp.md §1.3); < 0 here means absnet starts IBP from the ball's L∞ hull instead (the "
            "reference does that with wk_bound(..., ball_ibp='hull'))."
            if ANALYSES[analysis][1] == "only" else "")
    _assert_equal(lower, J[:, : SIZES[-1]], f"{analysis} L2 lower bounds", hint)
    _assert_equal(-upper, J[:, SIZES[-1] :], f"{analysis} L2 upper bounds (negated)", hint)
    _assert_equal(margins, Jm, f"{analysis} L2 margin_lower", hint)
