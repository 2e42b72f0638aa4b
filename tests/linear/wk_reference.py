"""An independent reference for the Wong & Kolter dual bound J (reference/crown_ibp.md §2.1).

Plain torch in float64; nothing from absnet is imported, so comparing this module with absnet's
``FastLin()``/``WongKolter()`` compares two derivations of the same number (the dual network here,
the backward substitution of linear bounds there).

Indexing follows the paper (Wong & Kolter, ICML 2018, Theorem 1):

    z_1 = x,   ẑ_{i+1} = W_i z_i + b_i  (i = 1 … k−1),   z_i = ReLU(ẑ_i)  (i = 2 … k−1),   f = ẑ_k.

The public functions take Python lists: ``weights[t] = W_{t+1}`` of shape (out, in),
``biases[t] = b_{t+1}``, and ``bounds[t] = (l_{t+2}, u_{t+2})``, the pre-activation bounds of the
t-th ReLU layer, each (B, n). An objective ``c`` is (B, m, n_out) or (m, n_out): one row per
specification, and J (B, m) lower-bounds c·f(x) over the input set, which is either an L∞ box
``box=(x_lo, x_hi)`` or an L2 ball ``ball=(x0, eps)`` (eps a number or (B,)).

The dual network for an objective c (§2.1):

    ν_k = −c,   ν̂_i = W_iᵀ ν_{i+1},   ν_i = D_i ν̂_i   (i = k−1 … 2),   ν̂_1 = W_1ᵀ ν_2,

    J = − Σ_{i=1}^{k−1} ν_{i+1}ᵀ b_i − h(ν̂_1) + Σ_{i=2}^{k−1} Σ_{j ∈ I_i} l_ij [ν_ij]₊

with h(ν̂_1) = Σ_j max(ν̂_1j·lo_j, ν̂_1j·hi_j) for the box (= max over the box of ν̂_1ᵀx) and
ν̂_1ᵀx₀ + ε‖ν̂_1‖₂ for the L2 ball. I_i is the set of unstable neurons (l < 0 < u). D_i is the
chord slope u/(u − l) on I_i, 1 on stable active (l ≥ 0) and 0 on stable inactive (u ≤ 0) neurons.

Theorem 1 allows, on unstable neurons, ν_ij = d_ij [ν̂_ij]₊ − α_ij [ν̂_ij]₋ with any α_ij ∈ [0, 1]
(α is the lower line's slope); Wong & Kolter (and Fast-Lin) take α = d, i.e. ν = D ν̂. The option
``lower_slope`` picks α: "chord" (α = d, the default), "adaptive" (CROWN: 1 if u > −l else 0),
"zero" or "one". Intermediate bounds come from the same dual with c = ±e_j for every neuron
(§2.2), so the reference is self-contained; optionally intersected with, or replaced by, interval
bounds (``ibp=``), which turns the same code into CROWN and CROWN-IBP with a fixed lower slope.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

DT = torch.float64
LOWER_SLOPES = ("chord", "adaptive", "zero", "one")
Tensor = torch.Tensor
Bounds = Sequence[tuple[Tensor, Tensor]]


def chord_slope(lb: Tensor, ub: Tensor) -> Tensor:
    """d = u/(u − l) on unstable neurons, 1 where l ≥ 0, 0 where u ≤ 0 (the diagonal of D_i)."""
    unstable = (lb < 0) & (ub > 0)
    safe = torch.where(unstable, ub - lb, torch.ones_like(ub))
    return torch.where(unstable, ub / safe, (lb >= 0).to(ub.dtype))


def lower_slope_alpha(lb: Tensor, ub: Tensor, rule: str) -> Tensor:
    """α on unstable neurons for the rule ``chord`` | ``adaptive`` | ``zero`` | ``one``."""
    if rule == "chord":
        return chord_slope(lb, ub)
    if rule == "adaptive":
        return (ub > -lb).to(ub.dtype)
    if rule == "zero":
        return torch.zeros_like(ub)
    if rule == "one":
        return torch.ones_like(ub)
    raise ValueError(f"lower_slope must be one of {LOWER_SLOPES}, not {rule!r}")


def _layers(weights: Sequence[Tensor], biases: Sequence[Tensor], bounds: Bounds):
    """The paper's 1-based dicts W_i, b_i (i = 1 … k−1) and l_i, u_i (i = 2 … k−1)."""
    k = len(weights) + 1
    if len(biases) != k - 1 or len(bounds) != k - 2:
        raise ValueError(f"{len(weights)} weights need {len(weights)} biases and {len(weights) - 1} bounds")
    W = {i: weights[i - 1] for i in range(1, k)}
    b = {i: biases[i - 1] for i in range(1, k)}
    lb = {i: bounds[i - 2][0] for i in range(2, k)}
    ub = {i: bounds[i - 2][1] for i in range(2, k)}
    return k, W, b, lb, ub


def _input_term(nu_hat_1: Tensor, box: tuple[Tensor, Tensor] | None, ball: tuple[Tensor, object] | None) -> Tensor:
    """h(ν̂_1) = max over the input set of ν̂_1ᵀx, (B, m)."""
    if (box is None) == (ball is None):
        raise ValueError("give exactly one of box=(x_lo, x_hi) or ball=(x0, eps)")
    if box is not None:
        lo, hi = (t.unsqueeze(1) for t in box)
        return torch.maximum(nu_hat_1 * lo, nu_hat_1 * hi).sum(-1)
    x0, eps = ball
    e = torch.as_tensor(eps, dtype=nu_hat_1.dtype).reshape(-1, 1)  # scalar or (B,) → (1|B, 1)
    return (nu_hat_1 * x0.unsqueeze(1)).sum(-1) + e * nu_hat_1.norm(dim=-1)


def dual_network(
    weights: Sequence[Tensor], biases: Sequence[Tensor], bounds: Bounds, c: Tensor, lower_slope: str = "chord"
) -> tuple[dict[int, Tensor], dict[int, Tensor], dict[int, Tensor]]:
    """The dual variables ν_i (i = 2 … k), ν̂_i (i = 1 … k−1) for c (B, m, n_out), and the masks
    of unstable neurons I_i (B, 1, n_i), all keyed by the paper's layer index."""
    k, W, _, lb, ub = _layers(weights, biases, bounds)
    nu: dict[int, Tensor] = {k: -c}
    nu_hat: dict[int, Tensor] = {}
    unstable: dict[int, Tensor] = {}
    for i in range(k - 1, 1, -1):
        nu_hat[i] = nu[i + 1] @ W[i]  # W_iᵀ ν_{i+1}, with ν as row vectors (B, m, n)
        li, ui = lb[i].unsqueeze(1), ub[i].unsqueeze(1)
        d = chord_slope(li, ui)
        alpha = lower_slope_alpha(li, ui, lower_slope)
        unstable[i] = (li < 0) & (ui > 0)
        crossing = d * nu_hat[i].clamp(min=0) - alpha * (-nu_hat[i]).clamp(min=0)
        nu[i] = torch.where(unstable[i], crossing, d * nu_hat[i])
    nu_hat[1] = nu[2] @ W[1]
    return nu, nu_hat, unstable


def dual_bound(
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    bounds: Bounds,
    c: Tensor,
    *,
    box: tuple[Tensor, Tensor] | None = None,
    ball: tuple[Tensor, object] | None = None,
    lower_slope: str = "chord",
) -> Tensor:
    """J(ν) (B, m): a lower bound of c·f(x) over the input set, given every ReLU layer's l, u."""
    k, _, b, lb, _ = _layers(weights, biases, bounds)
    batch = (box[0] if box is not None else ball[0]).shape[0]
    if c.dim() == 2:
        c = c.unsqueeze(0).expand(batch, *c.shape)
    nu, nu_hat, unstable = dual_network(weights, biases, bounds, c, lower_slope)
    J = -sum((nu[i + 1] * b[i]).sum(-1) for i in range(1, k))
    J = J - _input_term(nu_hat[1], box, ball)
    for i in range(2, k):
        J = J + torch.where(unstable[i], lb[i].unsqueeze(1) * nu[i].clamp(min=0), torch.zeros_like(nu[i])).sum(-1)
    return J


def lower_slope_used(weights: Sequence[Tensor], biases: Sequence[Tensor], bounds: Bounds, c: Tensor) -> Tensor:
    """(B, m) True where some unstable neuron gets ν̂ < 0 under the chord slopes, i.e. where α
    matters; where it is False, J is the same for every α and equals the triangle-LP optimum."""
    if c.dim() == 2:
        c = c.unsqueeze(0).expand(bounds[0][0].shape[0], *c.shape)
    _, nu_hat, unstable = dual_network(weights, biases, bounds, c)
    used = torch.zeros(c.shape[:2], dtype=torch.bool)
    for i, mask in unstable.items():
        used |= (mask & (nu_hat[i] < 0)).any(-1)
    return used


def _ibp_step(w: Tensor, bias: Tensor, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Interval arithmetic through one affine layer (centre/radius form, crown_ibp.md §1.3)."""
    mid, rad = (upper + lower) / 2, (upper - lower) / 2
    centre, radius = mid @ w.T + bias, rad @ w.abs().T
    return centre - radius, centre + radius


def intermediate_bounds(
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    *,
    box: tuple[Tensor, Tensor] | None = None,
    ball: tuple[Tensor, object] | None = None,
    lower_slope: str = "chord",
    ibp: str = "none",
    ball_ibp: str = "exact",
) -> list[tuple[Tensor, Tensor]]:
    """(l_i, u_i) of every ReLU layer, each by the dual of the network cut there with c = ±e_j.

    ``ibp`` also runs interval arithmetic (IBP) layer by layer from the previous layer's final
    bounds: ``"none"`` ignores it (Wong & Kolter, Fast-Lin, DeepPoly), ``"intersect"`` keeps the
    intersection of the dual's and IBP's bounds (CROWN as auto_LiRPA and absnet run it), ``"only"``
    uses IBP's bounds alone (CROWN-IBP). For a ball, IBP's first layer is exact,
    W x0 + b ± eps·‖W_j‖₂ (``ball_ibp="exact"``, crown_ibp.md §1.3), or starts from the ball's
    L∞ hull x0 ± eps (``ball_ibp="hull"``).
    """
    if ibp not in ("none", "intersect", "only"):
        raise ValueError(f"ibp must be 'none', 'intersect' or 'only', not {ibp!r}")
    if ball_ibp not in ("exact", "hull"):
        raise ValueError(f"ball_ibp must be 'exact' or 'hull', not {ball_ibp!r}")
    out: list[tuple[Tensor, Tensor]] = []
    for t in range(len(weights) - 1):
        if t > 0:  # the interval after the previous ReLU
            lower, upper = _ibp_step(weights[t], biases[t], out[-1][0].clamp(min=0), out[-1][1].clamp(min=0))
        elif box is not None:
            lower, upper = _ibp_step(weights[0], biases[0], *box)
        elif ball_ibp == "hull":
            e = torch.as_tensor(ball[1], dtype=ball[0].dtype).reshape(-1, 1)
            lower, upper = _ibp_step(weights[0], biases[0], ball[0] - e, ball[0] + e)
        else:
            x0, e = ball[0], torch.as_tensor(ball[1], dtype=ball[0].dtype).reshape(-1, 1)
            centre, radius = x0 @ weights[0].T + biases[0], e * weights[0].norm(dim=1)
            lower, upper = centre - radius, centre + radius
        if ibp != "only":
            n = weights[t].shape[0]
            eye = torch.eye(n, dtype=weights[t].dtype)
            J = dual_bound(weights[: t + 1], biases[: t + 1], out, torch.cat([eye, -eye]),
                           box=box, ball=ball, lower_slope=lower_slope)
            if ibp == "intersect":
                lower, upper = torch.maximum(J[:, :n], lower), torch.minimum(-J[:, n:], upper)
            else:
                lower, upper = J[:, :n], -J[:, n:]
        out.append((lower, upper))
    return out


def wk_bound(
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    c: Tensor,
    *,
    box: tuple[Tensor, Tensor] | None = None,
    ball: tuple[Tensor, object] | None = None,
    lower_slope: str = "chord",
    ibp: str = "none",
    ball_ibp: str = "exact",
) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """J for ``c`` with the reference's own intermediate bounds; returns (J, bounds)."""
    bnds = intermediate_bounds(weights, biases, box=box, ball=ball, lower_slope=lower_slope, ibp=ibp,
                               ball_ibp=ball_ibp)
    return dual_bound(weights, biases, bnds, c, box=box, ball=ball, lower_slope=lower_slope), bnds


def forward(weights: Sequence[Tensor], biases: Sequence[Tensor], x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """The concrete chain on x (..., n0): the output and every ReLU layer's pre-activation."""
    pre: list[Tensor] = []
    z = x
    for t, (w, bias) in enumerate(zip(weights, biases)):
        z = z @ w.T + bias
        if t < len(weights) - 1:
            pre.append(z)
            z = z.clamp(min=0)
    return z, pre


def margin_objective(y: Tensor, classes: int) -> Tensor:
    """c (B, K, K) with row j = e_y − e_j (row y is 0), so J matches absnet's ``margin_lower``."""
    eye = torch.eye(classes, dtype=DT)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def random_chain(sizes: Sequence[int], generator: torch.Generator, bias_scale: float = 0.3):
    """Weights N(0, 1/fan_in) and biases N(0, bias_scale²) for the chain sizes[0] → … → sizes[-1]."""
    weights, biases = [], []
    for n_in, n_out in itertools.pairwise(sizes):
        weights.append(torch.randn(n_out, n_in, generator=generator, dtype=DT) / n_in**0.5)
        biases.append(bias_scale * torch.randn(n_out, generator=generator, dtype=DT))
    return weights, biases


def chain_to_absnet(
    weights: Sequence[Tensor], biases: Sequence[Tensor], input_range: tuple[float, float], name: str = "Chain"
) -> str:
    """The chain as absnet DSL source: ``input [n0] range [lo, hi]``, then Linear/ReLU pairs.

    The t-th Linear sits at layer position 2t, so its state_dict keys are ``layers.<2t>.weight``
    and ``layers.<2t>.bias`` (see :func:`chain_state_dict`).
    """
    lo, hi = input_range
    stmts = [f"input [{weights[0].shape[1]}] range [{float(lo)!r}, {float(hi)!r}]"]
    for t, w in enumerate(weights):
        stmts.append(f"Linear({w.shape[0]})" + ("  ReLU()" if t < len(weights) - 1 else ""))
    if len(biases) != len(weights):
        raise ValueError("one bias per weight")
    return f"network {name} {{\n" + "".join(f"  {s}\n" for s in stmts) + "}\n"


def chain_state_dict(weights: Sequence[Tensor], biases: Sequence[Tensor]) -> dict[str, Tensor]:
    """The state_dict of the network written by :func:`chain_to_absnet`."""
    sd: dict[str, Tensor] = {}
    for t, (w, bias) in enumerate(zip(weights, biases)):
        sd[f"layers.{2 * t}.weight"] = w
        sd[f"layers.{2 * t}.bias"] = bias
    return sd


def load_chain(net: torch.nn.Module, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> torch.nn.Module:
    """Load the chain's weights into a compiled network (strict: the keys must match exactly)."""
    sd = chain_state_dict(weights, biases)
    have = net.state_dict()
    if set(have) != set(sd):
        raise KeyError(f"state_dict keys differ: network has {sorted(have)}, chain gives {sorted(sd)}")
    net.load_state_dict({k: v.to(have[k].dtype) for k, v in sd.items()}, strict=True)
    return net
