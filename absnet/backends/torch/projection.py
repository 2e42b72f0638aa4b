"""Random-projection estimates of Wong–Kolter intermediate bounds (``WongKolter(proj=k)``).

An estimate for training, not a certificate (reference/crown_ibp.md §2.3; ``Analysis.sound`` is
False and ``certify`` refuses it with E403).

Under WongKolter every ReLU uses its chord slope d above and below (§2.1), so back-substitution is
linear in the objective λ except where absolute values enter: at a ReLU with intercept b = −l⁻·d
(``relu_lines``) the constant is Σ min(Λ_i, 0)·b_i = ½Λ·b − ½|Λ|·b, and a box source concretises
to Λ·mid − |Λ|·rad. Hence, for the objectives ±e_j of neuron j of the value,

    lb_j = E_j − S_j,    ub_j = −lb(−e_j) = E_j + S_j,
    E    = the forward image of mid (at every source), b/2 (at every ReLU output) and the layers'
           biases through the linearised segment (each ReLU replaced by x ↦ d·x),
    S_j  = Σ_sources ‖J_j ⊙ rad‖₁ + Σ_ReLUs ‖ν_j ⊙ b/2‖₁ ,

J_j and ν_j being row j's coefficients at the source and at each ReLU output (S is even in λ, so
only E changes sign with the objective). E is computed exactly, as one row. S is estimated as in the
Scaling paper (``l1_median``): for R with i.i.d. standard Cauchy entries, w·R is Cauchy with scale
‖w‖₁, so ‖w‖₁ ≈ median_r |w·R_r|. By the same stability one Cauchy vector spread over all sources and
ReLUs is a Cauchy of scale S_j, so k rows estimate the whole sum (convex_adversarial draws k per layer
and adds the medians: T·k rows for a T-term sum, no more accurate than one median over T·k).

Forward images come from the backward rules by the transpose trick: with zero coefficients Λ
(N, rows, *shape) requiring grad, back-substitution gives Λ_u = M_u·Λ at every value u (linear:
slopes are fixed and the ReLU intercepts are left out), and ∂/∂Λ Σ_u ⟨Λ_u, V_u⟩ is the image of the
vectors V_u, row by row. The gradient is taken with ``create_graph`` whenever grad mode is on, so
training gradients reach the weights through the estimate.

An L2-ball source concretises to max(Λ·mid − |Λ|·rad, Λ·x₀ − ε‖Λ‖₂) (``concretize``): its two
images are exact rows, ‖Λ ⊙ rad‖₁ gets k Cauchy rows of its own and ‖Λ‖₂ ≈ ‖Λ·G‖₂/√k k Gaussian rows
(``l2_normal``); it adds max(m − c, x − ε·g) to the lower and min(m + c, x + ε·g) to the upper bound.
Segments with other relaxations (other activations, another lower slope) are bounded exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from absnet.domains.linear import (
    AFFINE_OPS,
    Backward,
    LinearValue,
    ancestors,
    back_substitute,
    interval,
)
from absnet.transformers.relaxations import relu_lines

T = torch.Tensor


@dataclass(frozen=True)
class Term:
    """One place where back-substitution takes an absolute value: a box source or a ReLU output.

    It contributes Λ_u·exact to the linear part E and ‖Λ_u ⊙ weight‖₁ to the spread S."""

    value: LinearValue
    exact: T  # (N, *shape_u): mid of a box, b/2 of a ReLU
    weight: T  # (N, *shape_u): rad of a box, b/2 of a ReLU


def terms(ops: Any, value: LinearValue) -> tuple[list[Term], list[LinearValue]] | None:
    """The box/ReLU terms and the L2-ball sources of ``value``'s segment; None when the segment is
    not linear in the objective apart from those (then only the exact bound applies)."""
    found: list[Term] = []
    balls: list[LinearValue] = []
    for v in ancestors(value):
        if v.source is not None:
            s = v.source
            if s.center is not None:
                balls.append(v)
            else:
                found.append(Term(v, (s.upper + s.lower) * 0.5, (s.upper - s.lower) * 0.5))
        elif v.op == "ReLU" and v.analysis.slope == "same_slope":
            lo, hi = interval(ops, v.inputs[0])
            half_b = relu_lines(ops, lo, hi, "same_slope")[2] * 0.5
            found.append(Term(v, half_b, half_b))
        elif v.op not in AFFINE_OPS:
            return None
    return found, balls


def substitute(ops: Any, value: LinearValue, lam: T) -> tuple[dict[int, T], T | None]:
    """Back-substitute ``lam`` through the segment (as ``lower_bound``) without concretising: the Λ
    reaching every value, keyed by ``id``, and the sum (B, rows) of the affine layers' constants
    (the ReLU intercepts, which are not linear in Λ, are left out)."""
    lams: dict[int, T] = {id(value): lam}
    taps: dict[int, T] = {}
    const: T | None = None
    for v in ancestors(value):
        lam_v = lams.pop(id(v), None)
        if lam_v is None:
            continue
        taps[id(v)] = lam_v
        if v.source is not None:
            continue
        assert v.backward is not None
        in_lams, c = v.backward(ops, lam_v, Backward())
        for inp, new in zip(v.inputs, in_lams, strict=True):
            if new is not None:
                old = lams.get(id(inp))
                lams[id(inp)] = new if old is None else old + new
        if c is not None and v.op != "ReLU":
            const = c if const is None else const + c
    return taps, const


#: (value u, first row, vectors (N, r, *shape_u)): the images of the r vectors fill rows first..first+r
Probe = tuple[LinearValue, int, T]


def images(ops: Any, value: LinearValue, rows: int, probes: list[Probe], bias_row: int | None = 0) -> T:
    """Forward images (N, rows, *shape) at ``value`` through the linearised segment: row ρ is the sum
    over probes of M_uᵀ·V_u,ρ, plus the image of the layers' biases in ``bias_row``."""
    like = value.box.center
    create = torch.is_grad_enabled()
    with torch.enable_grad():
        lam = torch.zeros((like.shape[0], rows, *value.shape), dtype=like.dtype, device=like.device,
                          requires_grad=True)
        taps, const = substitute(ops, value, lam)
        total = lam.new_zeros(())
        for u, first, vecs in probes:
            tap = taps.get(id(u))
            if tap is not None:
                if vecs.shape[1] != rows:  # slicing costs a zero-filled copy in the backward
                    tap = tap[:, first:first + vecs.shape[1]]
                total = total + (tap * vecs).sum()
        if const is not None and bias_row is not None:
            total = total + const[:, bias_row].sum()
        (img,) = torch.autograd.grad(total, lam, create_graph=create, allow_unused=True)
    return torch.zeros_like(lam.detach()) if img is None else img


class _Draws:
    """Cauchy and Gaussian samples from the network's generator (on the value's device: a device
    generator seeded from it when they differ), so runs are reproducible under a seed."""

    def __init__(self, ops: Any, like: T):
        self.like = like
        g = getattr(ops, "generator", None)
        if g is not None and g.device != like.device:
            seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device))
            g = torch.Generator(device=like.device).manual_seed(seed)
        self.g = g

    def cauchy(self, shape: tuple[int, ...]) -> T:
        u = torch.rand(shape, generator=self.g, dtype=self.like.dtype, device=self.like.device)
        return torch.tan(math.pi * (u - 0.5))

    def normal(self, shape: tuple[int, ...]) -> T:
        return torch.randn(shape, generator=self.g, dtype=self.like.dtype, device=self.like.device)


def _median_abs(t: T) -> T:
    """median_r |t_r| over axis 1; for even k the lower middle value (``torch.median``, as
    convex_adversarial), whose mean is closer to the scale than the midpoint's (0.98 vs 1.07 at k = 20)."""
    return t.abs().median(dim=1).values


def projected_interval(ops: Any, value: LinearValue, k: int) -> tuple[T, T]:
    """Estimated Wong–Kolter bounds (lower, upper), each (N, *shape), of ``value`` from k random
    projections (module docstring); the exact bounds where the segment is not of that form."""
    found = terms(ops, value)
    if found is None:
        return back_substitute(ops, value)
    found_terms, balls = found
    like = value.box.center
    n = like.shape[0]
    draw = _Draws(ops, like)
    probes: list[Probe] = []
    for t in found_terms:  # row 0: E; rows 1..k: Cauchy projections of the spread
        cauchy = t.weight.unsqueeze(1) * draw.cauchy((n, k, *t.weight.shape[1:]))
        probes.append((t.value, 0, torch.cat([t.exact.unsqueeze(1), cauchy], 1)))
    rows = 1 + k
    for b in balls:  # per ball: its mid, its centre, k Cauchy (ℓ1 of the box term), k Gaussian (ℓ2)
        s = b.source
        assert s is not None and s.center is not None
        mid, rad = (s.upper + s.lower) * 0.5, (s.upper - s.lower) * 0.5
        vecs = [mid.unsqueeze(1), s.center.unsqueeze(1), rad.unsqueeze(1) * draw.cauchy((n, k, *b.shape)),
                draw.normal((n, k, *b.shape))]
        probes.append((b, rows, torch.cat(vecs, 1)))
        rows += 2 + 2 * k
    img = images(ops, value, rows, probes)
    center, spread = img[:, 0], _median_abs(img[:, 1:1 + k])
    lo, hi = center - spread, center + spread
    first = 1 + k
    for b in balls:
        assert b.source is not None and b.source.eps is not None
        mid, x0 = img[:, first], img[:, first + 1]
        l1 = _median_abs(img[:, first + 2:first + 2 + k])
        l2 = torch.linalg.vector_norm(img[:, first + 2 + k:first + 2 + 2 * k], dim=1) / math.sqrt(k)
        eps = b.source.eps.reshape(-1, *([1] * len(value.shape)))
        lo = lo + torch.maximum(mid - l1, x0 - eps * l2)
        hi = hi + torch.minimum(mid + l1, x0 + eps * l2)
        first += 2 + 2 * k
    return lo, hi
