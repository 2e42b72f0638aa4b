"""Certify a network on a dataset with a cascade of analyses and an attack; three verdicts per example.

Rules, per batch of examples (DESIGN.md §5):

1. Clean check, in float64: an example the concrete network misclassifies is ``falsified``; the
   input itself is the counterexample (``by = "misclassified"``, distance 0).
2. The first (cheapest) analysis runs on every remaining example; an example is ``certified`` when
   every margin lower bound f_y − f_j (j ≠ y) over the ε-ball ∩ input range is > 0 (exactly
   :meth:`AbstractNetwork.certify`). ``by`` names the analysis, as it prints (``Box()``).
3. The attack runs next, on the examples still open: attacking is cheap next to CROWN-style
   analyses, and a falsified example needs no further analysis, so it runs *after* the cheapest
   analysis (which settles the easy examples without a single gradient step) but *before* the
   expensive ones (which are then spent only on examples the attack could not break).
4. A candidate point of the attack counts only after a re-check on a float64 copy of the network:
   the point is projected, in float64, onto the ε-ball ∩ input range (a bound rounded away from
   the centre is moved in by one ulp, so ``|p − x|∞ ≤ ε`` holds as float64 computes it) and the
   float64 argmax must differ from the label. Then the verdict is ``falsified`` (``by = "attack"``),
   with the predicted class and the L∞ distance.
5. The other analyses run in the given order, each on the examples no earlier step settled.
6. What is left is ``unknown``. Every example keeps the best (largest) worst-margin lower bound any
   analysis gave it (None if none ran on it) and its share of the time of the steps it went through.

An exception inside an analysis or the attack is an error, never a verdict: it propagates and no
report is made. Analyses run under ``torch.no_grad()`` as in ``absc test`` (an analysis that
optimises, such as α-CROWN, switches gradients on for itself, as attacks do).

>>> import absnet, torch
>>> net = absnet.compile_source("network N { input [2] range [-1, 1]  Linear(3) ReLU() Linear(2) }")
>>> r = verify(net, torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), 0.01, ["Box()"], attack="PGD(k=2)")
>>> r.counts()["total"]
4
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from absnet.diagnostics import AbsnetError, Diagnostic

DEFAULT_ANALYSES: tuple[str, ...] = ("Box()", "CROWN_IBP()", "CROWN()", "AlphaCROWN()")
DEFAULT_ATTACK = "PGD(k=20, r=2, restart=2)"
VERDICTS = ("certified", "falsified", "unknown")

Progress = Callable[[int, int, Mapping[str, int]], None]


@dataclass
class ExampleResult:
    """The verdict on one example and how it was reached."""

    index: int
    label: int
    verdict: str = "unknown"  # certified | falsified | unknown
    by: str | None = None  # the certifying analysis, "attack" or "misclassified"
    margin: float | None = None  # best worst-margin lower bound over the analyses that ran on it
    time: float = 0.0  # seconds: its share of every step it went through
    predicted: int | None = None  # falsified: the float64 prediction at the counterexample
    distance: float | None = None  # falsified: L∞ distance of the counterexample from the input
    counterexample: torch.Tensor | None = None  # falsified: the float64 point (unless not kept)

    def to_json(self, point: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "label": self.label, "verdict": self.verdict, "by": self.by,
                               "margin": self.margin, "time": self.time}
        if self.verdict == "falsified":
            out["predicted"], out["distance"] = self.predicted, self.distance
            if point and self.counterexample is not None:
                out["counterexample"] = self.counterexample.tolist()
        return out


@dataclass
class StageStats:
    """One step of the cascade: ``kind`` is clean, analysis or attack."""

    name: str
    kind: str
    tried: int = 0
    certified: int = 0
    falsified: int = 0
    time: float = 0.0


@dataclass
class VerifyReport:
    """All verdicts of a run, the statistics of each step, and the settings that produced them."""

    network: str
    epsilon: float
    analyses: list[str]
    attack: str | None
    seed: int
    examples: list[ExampleResult] = field(default_factory=list)
    stages: list[StageStats] = field(default_factory=list)
    time: float = 0.0

    def counts(self) -> dict[str, int]:
        """Examples per verdict, ``total``, and the falsified split into ``misclassified``/``attack``."""
        out = {v: 0 for v in VERDICTS}
        for e in self.examples:
            out[e.verdict] += 1
        out["total"] = len(self.examples)
        out["misclassified"] = sum(e.by == "misclassified" for e in self.examples)
        out["attack"] = sum(e.by == "attack" for e in self.examples)
        return out

    def summary(self) -> dict[str, Any]:
        c = self.counts()
        n = c["total"]
        out: dict[str, Any] = dict(c)
        out.update({f"{v}_fraction": (c[v] / n if n else None) for v in VERDICTS})
        out["time"] = self.time
        out["examples_per_second"] = n / self.time if self.time > 0 else None
        return out

    def to_json(self, points: bool = False) -> dict[str, Any]:
        """The report as JSON values; ``points`` adds each counterexample as a nested list."""
        return {
            "settings": {"network": self.network, "epsilon": self.epsilon, "analyses": self.analyses,
                         "attack": self.attack, "seed": self.seed},
            "summary": self.summary(),
            "stages": [vars(s).copy() for s in self.stages],
            "examples": [e.to_json(points) for e in self.examples],
        }


def verify(
    net: Any, x: torch.Tensor, y: torch.Tensor, eps: float,
    analyses: Sequence[str] = DEFAULT_ANALYSES, attack: str | None = DEFAULT_ATTACK,
    progress: Progress | None = None, *, batch: int | None = None, seed: int = 0,
    keep_counterexamples: bool = True, first_index: int = 0,
) -> VerifyReport:
    """Give every example of ``(x, y)`` a verdict: certified, falsified or unknown (see the module rules).

    Args:
        net: the AbstractNetwork (put in eval mode here; its mode is restored afterwards).
        x: inputs (N, *input_shape) on the network's device; y: labels (N,).
        eps: the L∞ radius of the ball around each input (intersected with the input range).
        analyses: analyses in DSL syntax, cheapest first; the attack runs after the first one.
        attack: an attack goal (``"PGD(k=20, r=2)"``) or None for no attack.
        progress: called after each batch as ``progress(done, total, counts)``.
        batch: examples per batch (default: all at once).
        seed: seeds the attack's random restarts.
        keep_counterexamples: keep each counterexample point (float64) on its result.
        first_index: the dataset index of ``x[0]`` (indices in the report count from it).

    Raises:
        AbsnetError: an unknown analysis (E201, with did-you-mean), an analysis some layer has no rule
            for (E401), a bad attack or epsilon (E206), inputs of the wrong shape (E601).
    """
    parsed = [net.analysis(a) for a in analyses]
    goal = parse_attack(attack) if attack is not None else None
    if not (isinstance(eps, int | float) and math.isfinite(eps) and eps >= 0):
        raise AbsnetError(Diagnostic("E206", f"epsilon must be a finite number >= 0, got {eps!r}"))
    if x.shape[0] != y.shape[0]:
        raise AbsnetError(Diagnostic("E601", f"{x.shape[0]} inputs but {y.shape[0]} labels"))
    if tuple(x.shape[1:]) != tuple(net.input_shape):
        raise AbsnetError(Diagnostic("E601", f"network {net.name} expects inputs of shape "
                                             f"[N, {', '.join(map(str, net.input_shape))}], but got {list(x.shape)}"))
    for a in parsed:
        net.plan(a, False)  # E401 (a layer without a rule for this analysis) before any work is done
    steps: list[tuple[str, Any]] = [("analysis", a) for a in parsed]
    if goal is not None:
        steps.insert(min(1, len(steps)), ("attack", goal))
    report = VerifyReport(net.name, float(eps), [str(a) for a in parsed], None if goal is None else str(goal), seed)
    report.stages = [StageStats("clean (float64)", "clean")] + [StageStats(str(s), k) for k, s in steps]
    from absnet.goals.base import GoalContext

    ctx = GoalContext(net=net, time=0.0, epsilon=float(eps), rng=random.Random(seed),
                      generator=torch.Generator().manual_seed(seed))
    was_training = net.training
    net.eval()
    net64 = float64_copy(net, x.device)
    start = time.perf_counter()
    try:
        n = x.shape[0]
        size = n if batch is None else max(1, int(batch))
        for i in range(0, n, size):
            sl = slice(i, i + size)
            report.examples += _verify_batch(net, net64, x[sl], y[sl], float(eps), steps, report.stages, ctx,
                                             keep_counterexamples, first_index + i)
            if progress is not None:
                progress(min(i + size, n), n, report.counts())
    finally:
        net.train(was_training)
    report.time = time.perf_counter() - start
    return report


def verify_split(
    net: Any, x: torch.Tensor, y: torch.Tensor, eps: float,
    analyses: Sequence[str] = DEFAULT_ANALYSES, attack: str | None = DEFAULT_ATTACK,
    progress: Progress | None = None, *, batch: int | None = None, seed: int = 0,
    keep_counterexamples: bool = True, first_index: int = 0,
) -> VerifyReport:
    """:func:`verify`, with the examples split across the processes of a ``torch.distributed`` job.

    Rank r verifies its contiguous part of ``(x, y)`` (every rank passes the whole set), with an
    attack seed of its own (rank 0 keeps ``seed``); every rank returns the whole report: the
    examples in dataset order, each step's counts and seconds summed over the ranks, and the wall
    time of the slowest rank. Verdicts are per example, so they are those of the rank that owned
    it. In a single process this is :func:`verify`.
    """
    from absnet.train import distributed

    job = distributed.info()
    if not job.enabled:
        return verify(net, x, y, eps, analyses, attack, progress, batch=batch, seed=seed,
                      keep_counterexamples=keep_counterexamples, first_index=first_index)
    import torch.distributed as dist

    from absnet.train.loop import derive_seed

    part = torch.arange(x.shape[0]).tensor_split(job.world)[job.rank]
    lo, n = (int(part[0]) if len(part) else 0), len(part)
    own_seed = seed if job.rank == 0 else derive_seed(seed, 0, distributed.rank_stream("verify", job.rank))
    local = verify(net, x[lo:lo + n], y[lo:lo + n], eps, analyses, attack, progress, batch=batch or max(n, 1),
                   seed=own_seed, keep_counterexamples=keep_counterexamples, first_index=first_index + lo)
    reports: list[Any] = [None] * job.world
    dist.all_gather_object(reports, local)
    merged = VerifyReport(local.network, local.epsilon, local.analyses, local.attack, seed)
    merged.examples = [e for r in reports for e in r.examples]
    for i, stage in enumerate(local.stages):
        merged.stages.append(StageStats(stage.name, stage.kind, *(sum(getattr(r.stages[i], k) for r in reports)
                                                                  for k in ("tried", "certified", "falsified",
                                                                            "time"))))
    merged.time = max(r.time for r in reports)
    return merged


def parse_attack(text: str) -> Any:
    """An attack goal from its DSL text; E206 for goals that are not attacks or that fix their own width."""
    from absnet.goals.attacks import Attack
    from absnet.goals.catalog import parse_goal

    goal = parse_goal(text)
    if not isinstance(goal, Attack):
        raise AbsnetError(Diagnostic("E206", f"{goal} is not an attack", notes=(f"in --attack {text!r}",),
                                     help="use PGD(k=20, r=2), MI_FGSM(), IFGSM() or FGSM(), or 'none'"))
    if goal.w is not None:
        raise AbsnetError(Diagnostic("E206", f"{goal} sets its own width, but verification attacks at epsilon",
                                     help="drop w=: the attack uses the ball being verified"))
    return goal


def float64_copy(net: Any, device: torch.device | str | None = None) -> Any:
    """A float64 twin of an AbstractNetwork (same graph and weights), in eval mode, for re-checks."""
    from absnet.backends.torch.network import AbstractNetwork

    twin = AbstractNetwork(net.graph, source=net.source)
    twin.time = net.time
    twin.to(device=device, dtype=torch.float64)
    twin.load_state_dict(net.state_dict())  # copy_ casts to float64
    return twin.eval()


def recheck(net64: Any, x: torch.Tensor, y: torch.Tensor, candidate: torch.Tensor,
            eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project candidates onto the ε-ball ∩ input range in float64 and test them on ``net64``.

    Returns:
        (counterexample mask, float64 prediction, L∞ distance, the projected float64 points).
    """
    lo, hi = net64.input_range
    x64 = x.to(torch.float64)
    lower = _inside(x64, x64 - eps, eps).clamp(min=lo)
    upper = _inside(x64, x64 + eps, eps).clamp(max=hi)
    p = torch.minimum(torch.maximum(candidate.to(torch.float64), lower), upper)
    with torch.no_grad():
        pred = net64(p).argmax(dim=1)
    dist = (p - x64).abs().flatten(1).amax(dim=1)
    flat = p.flatten(1)
    ok = (pred != y) & (dist <= eps) & (flat >= lo).all(dim=1) & (flat <= hi).all(dim=1)
    return ok, pred, dist, p


def _inside(x: torch.Tensor, bound: torch.Tensor, eps: float) -> torch.Tensor:
    """``bound`` (= x ± eps rounded) moved one ulp towards ``x`` where rounding put it beyond eps."""
    return torch.where((bound - x).abs() > eps, torch.nextafter(bound, x), bound)


def _chunk(net: Any, analysis: Any, n: int, dtype_bytes: int) -> int:
    """How many examples to analyse at once so the values fit ABSNET_EVAL_MEMORY_GIB (default 2)."""
    if analysis.kind == "point":
        return n
    budget = float(os.environ.get("ABSNET_EVAL_MEMORY_GIB", "2")) * 2**30
    return max(1, min(n, int(budget // max(net.bytes_per_example(analysis, dtype_bytes), 1))))


def worst_margin(net: Any, x: torch.Tensor, y: torch.Tensor, eps: float, analysis: Any) -> torch.Tensor:
    """min over j ≠ y of the lower bound of f_y − f_j (N,), as ``certify`` computes it (> 0: certified)."""
    onehot = torch.nn.functional.one_hot(y.long(), net.output_shape[0]).bool()
    parts = []
    step = _chunk(net, analysis, x.shape[0], x.element_size())
    for i in range(0, x.shape[0], step):
        with torch.no_grad():
            m = net.margin_lower(x[i:i + step], y[i:i + step], eps, domain=analysis)
        parts.append(m.detach().masked_fill(onehot[i:i + step], float("inf")).min(dim=1).values)
    return torch.cat(parts) if parts else x.new_zeros(0)


def _verify_batch(net: Any, net64: Any, x: torch.Tensor, y: torch.Tensor, eps: float, steps: list[tuple[str, Any]],
                  stages: list[StageStats], ctx: Any, keep: bool, first: int) -> list[ExampleResult]:
    n = x.shape[0]
    results = [ExampleResult(first + i, int(label)) for i, label in enumerate(y.tolist())]
    t0 = time.perf_counter()
    with torch.no_grad():
        pred = net64(x.to(torch.float64)).argmax(dim=1)
    wrong = pred != y
    for i, (bad, p) in enumerate(zip(wrong.tolist(), pred.tolist())):
        if bad:
            _falsify(results[i], "misclassified", p, 0.0, x[i].to(torch.float64) if keep else None)
    _account(stages[0], results, list(range(n)), time.perf_counter() - t0, falsified=int(wrong.sum()))
    open_ = ~wrong
    for (kind, what), stats in zip(steps, stages[1:]):
        idx = open_.nonzero().flatten()
        if idx.numel() == 0:
            continue
        rows = idx.tolist()
        t0 = time.perf_counter()
        if kind == "analysis":
            worst = worst_margin(net, x[idx], y[idx], eps, what)
            done = worst > 0
            for r, m, ok in zip(rows, worst.tolist(), done.tolist()):
                best = results[r].margin
                if not math.isnan(m) and (best is None or m > best):
                    results[r].margin = m
                if ok:
                    results[r].verdict, results[r].by = "certified", str(what)
            _account(stats, results, rows, time.perf_counter() - t0, certified=int(done.sum()))
        else:
            point = what.point(ctx, x[idx], y[idx], eps)
            done, p_pred, dist, p = recheck(net64, x[idx], y[idx], point, eps)
            for j, (r, ok, c, d) in enumerate(zip(rows, done.tolist(), p_pred.tolist(), dist.tolist())):
                if ok:
                    _falsify(results[r], "attack", c, d, p[j] if keep else None)
            _account(stats, results, rows, time.perf_counter() - t0, falsified=int(done.sum()))
        open_[idx[done]] = False
    return results


def _falsify(r: ExampleResult, by: str, predicted: int, distance: float, point: torch.Tensor | None) -> None:
    r.verdict, r.by, r.predicted, r.distance = "falsified", by, predicted, distance
    r.counterexample = None if point is None else point.detach().cpu()


def _account(stats: StageStats, results: list[ExampleResult], rows: list[int], dt: float, *,
             certified: int = 0, falsified: int = 0) -> None:
    stats.tried += len(rows)
    stats.certified += certified
    stats.falsified += falsified
    stats.time += dt
    for r in rows:
        results[r].time += dt / len(rows)


def format_table(report: VerifyReport) -> str:
    """The steps of the cascade (tried, certified, falsified, time) and the verdict counts, as text."""
    rows = [("step", "kind", "tried", "certified", "falsified", "time")]
    for s in report.stages:
        rows.append((s.name, s.kind, str(s.tried), str(s.certified) if s.kind == "analysis" else "-",
                     str(s.falsified) if s.kind != "analysis" else "-", f"{s.time:.2f}s"))
    c = report.counts()
    n = c["total"]
    pct = (lambda k: f"{100 * k / n:.2f}%") if n else (lambda k: "n/a")
    rate = f"{n / report.time:.1f} examples/s" if report.time > 0 else ""
    verdicts = [("verdict", "count", "%", ""),
                ("certified", str(c["certified"]), pct(c["certified"]), ""),
                ("falsified", str(c["falsified"]), pct(c["falsified"]),
                 f"{c['misclassified']} misclassified, {c['attack']} by the attack"),
                ("unknown", str(c["unknown"]), pct(c["unknown"]), ""),
                ("total", str(n), pct(n), f"{report.time:.2f}s, {rate}".rstrip(", "))]
    return _align(rows, "llrrrr") + "\n\n" + _align(verdicts, "lrrl")


def _align(rows: Sequence[Sequence[str]], how: str) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, how)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths if w).rstrip())
    return "\n".join(lines)


__all__ = ["DEFAULT_ANALYSES", "DEFAULT_ATTACK", "ExampleResult", "StageStats", "VerifyReport", "float64_copy",
           "format_table", "parse_attack", "recheck", "verify", "verify_split", "worst_margin"]
