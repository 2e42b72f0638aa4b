"""Decide a VNN-LIB property on a network: unsat (verified), sat (counterexample), unknown, timeout, error.

Rules, per case of the property (an input box and a disjunction of output regions C·y ≤ d):

1. The centre of the box is evaluated; a point that lands in a disjunct is a counterexample.
2. The analyses run in the given order, cheapest first, on the disjuncts still open. A disjunct is
   *excluded* when some row of C·y ≤ d is provably violated: a sound lower bound of (C·y)_i over
   the box is > d_i. Linear analyses (CROWN family) bound C·y by back-substitution with C as the
   objective (C meets the last layer first); a zonotope maps exactly through C (generators C·e,
   box radii through |C|); a box through the positive and negative parts of C.
3. The counterexample search (PGD on max_i (C·y − d)_i, minimised over the box with random
   starts) runs after the first analysis on what is still open, as ``absc verify`` does on datasets.
4. Input splitting (branch and bound) runs last with ``split_analysis``: boxes are analysed in
   batches, a box is dropped once every disjunct is excluded on it, its centre is tested
   concretely, and the others are bisected along the input with the largest influence — width ×
   Σ|Λ| of the back-substituted coefficients at the input (linear analyses), else width × |∇ of the
   open rows at the centre| (the smear heuristic). It stops at the time limit or ``max_boxes``.
5. A candidate counts only after a re-check: the point is made representable in the network's
   dtype inside the box (float64 comparisons), then both the float64 twin of the network and the
   network itself must put the output in the disjunct (``<`` where the row is strict).
6. The property is ``unsat`` when every case is, ``sat`` as soon as one case has a counterexample,
   ``timeout`` when time ran out first, ``unknown`` otherwise. Analyses run in float64 by default.
   Any exception is an ``error`` verdict carrying the message, never ``unsat``.

The network's declared input range is *not* applied: the property's box is the input set.

>>> import absnet
>>> from absnet.verify.vnnlib import parse_vnnlib
>>> net = absnet.compile_source("network N { input [1] range [-1, 1]  Linear(2) }")
>>> p = parse_vnnlib("(declare-const X_0 Real)(declare-const Y_0 Real)(declare-const Y_1 Real)"
...                  "(assert (>= X_0 0))(assert (<= X_0 0))(assert (<= (+ Y_0 Y_1) 1e9))")
>>> verify_property(net, p, ["Box()"]).verdict
'sat'
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from absnet.diagnostics import AbsnetError, Diagnostic
from absnet.domains import Box, Zonotope
from absnet.domains import linear as L
from absnet.transformers import margins as M
from absnet.verify.verifier import float64_copy
from absnet.verify.vnnlib import Case, Property

DEFAULT_ANALYSES: tuple[str, ...] = ("Box()", "CROWN_IBP()", "CROWN()", "AlphaCROWN()")
VERDICTS = ("unsat", "sat", "unknown", "timeout", "error")


@dataclass
class PropertyResult:
    """The verdict on a property, what settled it, and the counterexample (``sat``)."""

    verdict: str
    time: float = 0.0
    by: str | None = None  # unsat: the analysis (or "split(...)"); sat: "center", "pgd" or "split"
    message: str | None = None  # error: what went wrong
    x: np.ndarray | None = None  # sat: the flat float64 input
    y: np.ndarray | None = None  # sat: the float64 outputs at it
    stats: dict[str, Any] = field(default_factory=dict)  # disjuncts excluded per analysis, boxes split, …
    internal: bool = False  # error: an unexpected exception (a bug), not a problem of the input

    def to_json(self) -> dict[str, Any]:
        out = {"verdict": self.verdict, "time": self.time, "by": self.by, "message": self.message,
               "stats": self.stats}
        if self.x is not None and self.y is not None:
            out["counterexample"] = {"x": self.x.tolist(), "y": self.y.tolist()}
        return out


def format_counterexample(x: np.ndarray, y: np.ndarray) -> str:
    """VNN-COMP's counterexample file: ``sat`` then ``((X_0 v)\\n (X_1 v) … (Y_0 v) …)``."""
    items = [f"(X_{i} {float(v)!r})" for i, v in enumerate(x)] + [f"(Y_{j} {float(v)!r})" for j, v in enumerate(y)]
    return "sat\n(" + "\n ".join(items) + ")\n"


@dataclass
class _Ctx:
    net: Any  # the network as given (its dtype)
    anet: Any  # the network the analyses run on (float64 twin by default)
    net64: Any
    analyses: list[Any]
    split_analysis: Any | None
    deadline: float
    attack: bool
    steps: int
    restarts: int
    batch: int
    max_boxes: int
    gen: torch.Generator
    stats: dict[str, Any]


class _Found(Exception):
    def __init__(self, x: np.ndarray, y: np.ndarray, by: str):
        super().__init__(by)
        self.x, self.y, self.by = x, y, by


def verify_property(
    net: Any, prop: Property, analyses: Sequence[str] = DEFAULT_ANALYSES, *, timeout: float = 60.0,
    attack: bool = True, steps: int = 50, restarts: int = 8, split: bool = True,
    split_analysis: str | None = None, batch: int = 64, max_boxes: int = 100_000, seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> PropertyResult:
    """Decide ``prop`` on ``net`` (see the module rules); never raises for a bad run: verdict ``error``.

    Args:
        net: an AbstractNetwork whose flat input and output sizes match the property's X and Y.
        prop: the property (:func:`absnet.verify.vnnlib.read_vnnlib`).
        analyses: analyses in DSL syntax, cheapest first.
        timeout: seconds for the whole property (checked between steps).
        attack: run the PGD counterexample search (``steps`` iterations, ``restarts`` random starts).
        split: branch on the inputs once the analyses are spent.
        split_analysis: the analysis of each split box (default: the last of ``analyses`` that does
            not optimise slopes, else the last one).
        batch: boxes analysed at once while splitting; max_boxes: boxes analysed in all.
        seed: seeds the random starts; dtype: the analyses' dtype (float64 by default).
    """
    start = time.perf_counter()
    stats: dict[str, Any] = {}
    was_training = net.training
    try:
        net.eval()
        return _verify(net, prop, analyses, timeout, attack, steps, restarts, split, split_analysis, batch,
                       max_boxes, seed, dtype, stats, start)
    except Exception as e:  # an error is an error, never a verdict (DESIGN.md §5)
        msg = e.render() if isinstance(e, AbsnetError) else f"{type(e).__name__}: {e}"
        return PropertyResult("error", time.perf_counter() - start, message=msg, stats=stats,
                              internal=not isinstance(e, AbsnetError))
    finally:
        net.train(was_training)


def _verify(net: Any, prop: Property, analyses: Sequence[str], timeout: float, attack: bool, steps: int,
            restarts: int, split: bool, split_analysis: str | None, batch: int, max_boxes: int, seed: int,
            dtype: torch.dtype, stats: dict[str, Any], start: float) -> PropertyResult:
    n_in, n_out = math.prod(net.input_shape), math.prod(net.output_shape)
    if (prop.num_inputs, prop.num_outputs) != (n_in, n_out):
        raise AbsnetError(Diagnostic(
            "E504", f"{prop.file} declares {prop.num_inputs} inputs and {prop.num_outputs} outputs, but network "
            f"{net.name} has {n_in} inputs {list(net.input_shape)} and {n_out} outputs {list(net.output_shape)}",
            help="pass the property written for this network"))
    parsed = [net.analysis(a) for a in analyses]
    chosen = net.analysis(split_analysis) if split_analysis else next(
        (a for a in reversed(parsed) if not a.alpha_iters), parsed[-1] if parsed else None)
    for a in [*parsed, *([chosen] if chosen is not None else [])]:
        if not a.sound or a.kind == "point":
            raise AbsnetError(Diagnostic("E403", f"{a} gives no sound bounds over a box",
                                         help="use Box(), HBox(), CROWN_IBP(), CROWN() or AlphaCROWN()"))
        net.plan(a, False)
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    net64 = float64_copy(net, device)
    anet = net64 if dtype == torch.float64 else net
    ctx = _Ctx(net, anet, net64, parsed, chosen if split else None, start + timeout, attack, steps, restarts,
               max(1, batch), max_boxes, torch.Generator().manual_seed(seed), stats)
    stats.update({str(a): 0 for a in parsed})
    stats.update({"pgd": 0, "split_boxes": 0, "split_unsat_cases": 0})
    outcomes = []
    try:
        for case in prop.cases:
            outcomes.append(_case(ctx, case, device))
    except _Found as f:
        return PropertyResult("sat", time.perf_counter() - start, f.by, x=f.x, y=f.y, stats=stats)
    elapsed = time.perf_counter() - start
    if all(o[0] == "unsat" for o in outcomes):
        bys = sorted({o[1] for o in outcomes if o[1]})
        return PropertyResult("unsat", elapsed, ", ".join(bys) or "empty", stats=stats)
    verdict = "timeout" if any(o[0] == "timeout" for o in outcomes) else "unknown"
    return PropertyResult(verdict, elapsed, stats=stats)


def _case(ctx: _Ctx, case: Case, device: torch.device) -> tuple[str, str | None]:
    shape = ctx.net.input_shape
    lo = torch.as_tensor(case.lower, dtype=torch.float64, device=device).reshape(1, *shape)
    hi = torch.as_tensor(case.upper, dtype=torch.float64, device=device).reshape(1, *shape)
    spec = _Spec(case, device)
    _check_points(ctx, (lo + hi) / 2, lo, hi, spec, "center")
    open_ = torch.ones(len(case.disjuncts), dtype=torch.bool, device=device)
    for i, a in enumerate(ctx.analyses):
        if time.perf_counter() > ctx.deadline:
            return "timeout", None
        with torch.no_grad():
            lb, _ = _lower(ctx.anet, a, lo, hi, spec.C)
        excluded = spec.excluded(lb)[0] & open_
        ctx.stats[str(a)] += int(excluded.sum())
        open_ &= ~excluded
        if not open_.any():
            return "unsat", str(a)
        if i == 0 and ctx.attack:
            _pgd(ctx, lo, hi, spec, open_)
    if not ctx.analyses and ctx.attack:
        _pgd(ctx, lo, hi, spec, open_)
    if ctx.split_analysis is None:
        return "unknown", None
    return _split(ctx, lo, hi, spec, open_)


class _Spec:
    """All rows of a case's disjuncts stacked: C (S, K), d (S,), strict (S,), owner (S,) → disjunct."""

    def __init__(self, case: Case, device: torch.device):
        ds = case.disjuncts
        k = ds[0].C.shape[1] if ds else 0
        self.C = torch.as_tensor(np.concatenate([dj.C for dj in ds]).reshape(-1, k), dtype=torch.float64,
                                 device=device)
        self.d = torch.as_tensor(np.concatenate([dj.d for dj in ds]), dtype=torch.float64, device=device)
        self.strict = torch.as_tensor(np.concatenate([dj.strict for dj in ds]), device=device)
        owner = np.concatenate([np.full(len(dj.d), i) for i, dj in enumerate(ds)]).astype(np.int64)
        self.owner = torch.as_tensor(owner, device=device)
        self.D = len(ds)
        # (D, S) membership: row s belongs to disjunct k
        self.member = torch.nn.functional.one_hot(self.owner, self.D).T.bool() if self.D else torch.zeros(0, 0)

    def excluded(self, lb: torch.Tensor) -> torch.Tensor:
        """(N, D): some row of the disjunct has a lower bound of C·y above d."""
        viol = lb.to(torch.float64) > self.d  # (N, S)
        return (viol.unsqueeze(1) & self.member.unsqueeze(0)).any(dim=2)

    def satisfied(self, y: torch.Tensor) -> torch.Tensor:
        """(N, D): every row of the disjunct holds at the concrete outputs y (N, K), strictly where strict."""
        v = y.to(torch.float64).flatten(1) @ self.C.T - self.d  # (N, S)
        ok = torch.where(self.strict, v < 0, v <= 0)
        return ~((~ok).unsqueeze(1) & self.member.unsqueeze(0)).any(dim=2)


def _lower(net: Any, a: Any, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor,
           taps: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sound lower bounds (N, S) of C·y over the boxes [lo, hi] (N, *s) under ``a``; with ``taps``
    (linear analyses without α) also Λ over the input (B, S, *s) for the split heuristic."""
    from absnet.backends.torch.ops import TorchOps

    dt = next((p.dtype for p in net.parameters()), torch.float64)
    ops = TorchOps(net.rng)
    inp = M.abstract_input(ops, lo.to(dt), hi.to(dt), a)
    out = net.propagate(inp, a, ops=ops)
    Cd = C.to(dt)
    if isinstance(out, L.LinearValue):
        spec = Cd.reshape(1, Cd.shape[0], *out.shape)
        if a.alpha_iters:
            return L.optimised_lower_bound(ops, out, spec).detach(), None
        bw = L.Backward(taps={}) if taps else None
        lb = L.lower_bound(ops, out, spec, bw)
        return lb, (bw.taps.get(id(inp)) if bw is not None and bw.taps is not None else None)
    if isinstance(out, Box):
        c, r = out.center.flatten(1), out.radius.flatten(1)
        return c @ Cd.T - r @ Cd.abs().T, None
    if isinstance(out, Zonotope):
        lb = out.center.flatten(1) @ Cd.T
        if out.gens is not None:
            g = out.gens.flatten(2) @ Cd.T  # (N, k, S): the generators mapped exactly through C
            lb = lb - g.abs().sum(dim=1)
        if out.box is not None:
            lb = lb - out.box.flatten(1) @ Cd.abs().T
        return lb, None
    raise AbsnetError(Diagnostic("E403", f"{a} gives no bounds over a box"))


def _representable(p: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``p`` rounded to ``dtype`` and moved by an ulp where rounding left the box (float64 result)."""
    p = torch.minimum(torch.maximum(p.to(torch.float64), lo), hi)
    if dtype == torch.float64:
        return p
    q = p.to(dtype)
    q = torch.where(q.to(torch.float64) < lo, torch.nextafter(q, torch.full_like(q, math.inf)), q)
    q = torch.where(q.to(torch.float64) > hi, torch.nextafter(q, torch.full_like(q, -math.inf)), q)
    return q.to(torch.float64)


def _check_points(ctx: _Ctx, p: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, spec: _Spec, by: str,
                  open_: torch.Tensor | None = None) -> None:
    """Raise :class:`_Found` when a point of ``p`` (N, *s), re-checked as rule 5 says, is a counterexample
    (``open_`` (N, D) limits the disjuncts asked about; the re-check accepts any disjunct)."""
    dt = next((q.dtype for q in ctx.net.parameters()), torch.float64)
    q = _representable(p, lo, hi, dt)
    inside = ((q >= lo) & (q <= hi)).flatten(1).all(dim=1)
    with torch.no_grad():
        y64 = ctx.net64(q)
        y = ctx.net(q.to(dt))
    hit = (spec.satisfied(y64) & spec.satisfied(y)).any(dim=1) & inside
    if spec.D == 0 or not hit.any():
        return
    i = int(hit.nonzero()[0, 0])
    raise _Found(q[i].flatten().cpu().numpy(), y64[i].flatten().cpu().numpy(), by)


def _pgd(ctx: _Ctx, lo: torch.Tensor, hi: torch.Tensor, spec: _Spec, open_: torch.Tensor,
         steps: int | None = None, restarts: int | None = None, by: str = "pgd") -> None:
    """Minimise max_i (C·y − d)_i of each open disjunct over each box (lo, hi: (B, *s)) from random starts."""
    steps, restarts = steps or ctx.steps, restarts or ctx.restarts
    net, dt = ctx.net, next((q.dtype for q in ctx.net.parameters()), torch.float32)
    ks = open_.nonzero().flatten() if open_.dim() == 1 else None
    if ks is None or ks.numel() == 0:
        return
    ctx.stats["pgd"] += 1
    n = ks.numel() * restarts * lo.shape[0]
    rep = n // lo.shape[0]
    L64, U64 = lo.repeat_interleave(rep, 0), hi.repeat_interleave(rep, 0)
    L_, U_ = L64.to(dt), U64.to(dt)
    target = ks.repeat(restarts * lo.shape[0])  # (n,) disjunct of each start
    mask = spec.member[target]  # (n, S)
    C, d = spec.C.to(dt), spec.d.to(dt)
    u = torch.rand(L_.shape, generator=ctx.gen, dtype=dt).to(L_.device)
    x = L_ + (U_ - L_) * u
    x[: ks.numel()] = ((L_ + U_) / 2)[: ks.numel()]  # one start at the centre per disjunct
    width = U_ - L_
    for i in range(steps):
        if time.perf_counter() > ctx.deadline:
            break
        with torch.enable_grad():
            xv = x.detach().requires_grad_(True)
            v = net(xv).flatten(1) @ C.T - d  # (n, S)
            obj = torch.where(mask, v, torch.full_like(v, -torch.inf)).amax(dim=1)
            (g,) = torch.autograd.grad(obj.sum(), xv)
        if (obj.detach() <= 0).any() or i == steps - 1:
            _check_points(ctx, x, L64, U64, spec, by)
        alpha = width * (0.25 * (1 - i / steps) + 0.01)
        x = torch.minimum(torch.maximum(x - alpha * g.sign(), L_), U_).detach()


def _split(ctx: _Ctx, lo: torch.Tensor, hi: torch.Tensor, spec: _Spec, open_: torch.Tensor) -> tuple[str, str | None]:
    """Branch and bound on the inputs (rule 4); raises :class:`_Found` on a counterexample."""
    a = ctx.split_analysis
    stack: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = [(lo, hi, open_.unsqueeze(0))]
    stuck = False
    rounds = 0
    while stack:
        if time.perf_counter() > ctx.deadline:
            return "timeout", None
        if ctx.stats["split_boxes"] >= ctx.max_boxes:
            return "unknown", None
        Ls, Us, Os = [], [], []
        count = 0
        while stack and count < ctx.batch:
            l_, u_, o_ = stack.pop()
            Ls.append(l_)
            Us.append(u_)
            Os.append(o_)
            count += l_.shape[0]
        lo_b, hi_b, op_b = torch.cat(Ls), torch.cat(Us), torch.cat(Os)
        ctx.stats["split_boxes"] += lo_b.shape[0]
        with torch.no_grad():
            lb, lam = _lower(ctx.anet, a, lo_b, hi_b, spec.C, taps=True)
        op_b = op_b & ~spec.excluded(lb)
        keep = op_b.any(dim=1)
        if not keep.any():
            continue
        lo_b, hi_b, op_b, lb = lo_b[keep], hi_b[keep], op_b[keep], lb[keep]
        _check_points(ctx, (lo_b + hi_b) / 2, lo_b, hi_b, spec, "split")
        rounds += 1
        if ctx.attack and rounds % 8 == 0:
            _pgd(ctx, lo_b[:1], hi_b[:1], spec, op_b[0], steps=max(5, ctx.steps // 5), restarts=2, by="split")
        rows_open = (op_b.to(torch.float64) @ spec.member.to(torch.float64)) > 0  # (N, S)
        width = (hi_b - lo_b).flatten(1)
        if lam is not None:
            lam = lam[keep] if lam.shape[0] > 1 else lam
            sens = (lam.abs().flatten(2) * rows_open.unsqueeze(2).to(lam.dtype)).sum(dim=1)
        else:
            sens = _smear(ctx, (lo_b + hi_b) / 2, spec, rows_open)
        score = width * sens.to(width.dtype)
        score = torch.where(width > 0, score + 1e-12 * width, torch.full_like(score, -1.0))
        dim = score.argmax(dim=1)
        rows = torch.arange(lo_b.shape[0], device=lo_b.device)
        flat_lo, flat_hi = lo_b.flatten(1), hi_b.flatten(1)
        mid = (flat_lo[rows, dim] + flat_hi[rows, dim]) / 2
        ok = (mid > flat_lo[rows, dim]) & (mid < flat_hi[rows, dim])
        if not ok.all():
            stuck = True  # a box too thin to bisect: it cannot be verified by splitting
        left_hi, right_lo = flat_hi.clone(), flat_lo.clone()
        left_hi[rows, dim] = mid
        right_lo[rows, dim] = mid
        shape = lo_b.shape
        stack.append((flat_lo[ok].reshape(-1, *shape[1:]), left_hi[ok].reshape(-1, *shape[1:]), op_b[ok]))
        stack.append((right_lo[ok].reshape(-1, *shape[1:]), flat_hi[ok].reshape(-1, *shape[1:]), op_b[ok]))
    if stuck:
        return "unknown", None
    ctx.stats["split_unsat_cases"] += 1
    return "unsat", f"split({a})"


def _smear(ctx: _Ctx, centre: torch.Tensor, spec: _Spec, rows_open: torch.Tensor) -> torch.Tensor:
    """|∇ Σ_open rows (C·y)| at the centres (N, n): the smear heuristic's sensitivity."""
    dt = next((q.dtype for q in ctx.net.parameters()), torch.float32)
    with torch.enable_grad():
        xv = centre.to(dt).detach().requires_grad_(True)
        v = ctx.net(xv).flatten(1) @ spec.C.to(dt).T
        (g,) = torch.autograd.grad((v * rows_open.to(dt)).sum(), xv)
    return g.abs().flatten(1)


__all__ = ["DEFAULT_ANALYSES", "VERDICTS", "PropertyResult", "format_counterexample", "verify_property"]
