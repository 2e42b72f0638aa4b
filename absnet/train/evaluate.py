"""Evaluate test goals over a dataset: clean accuracy, attack accuracy and certified accuracy.

For every test goal (reference/diffai.md §3.8), over the test set: the clean prediction ŷ of the
concrete network; the goal's value for each example (an attack point, or an abstract region
pushed through the network); ``proved`` = the goal's check against ŷ, ``safe`` = against the true
label (for abstract goals the correlation-aware margin test, for attacks "argmax unchanged"). The
report gives Pr[Proved], Pr[Corr and Proved] (= certified or attack accuracy), Pr[Corr | Proved],
the mean output width and the time, and names the analysis that produced each certificate.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from absnet.goals.base import GoalContext
from absnet.goals.loss import test_outcome


@dataclass
class GoalReport:
    """The results of one test goal."""

    goal: str
    analysis: str
    n: int
    clean: float  # clean accuracy
    safe: float  # Pr[Corr and Proved]: certified (or attack) accuracy
    proved: float  # Pr[Proved]
    corr_given_proved: float  # Pr[Corr | Proved]
    width: float  # mean output width (sum of output radii)
    time: float  # seconds
    epsilon: float

    def metrics(self) -> dict[str, float]:
        p = f"test/{self.goal}"
        return {f"{p}/clean": self.clean, f"{p}/safe": self.safe, f"{p}/proved": self.proved,
                f"{p}/corr_given_proved": self.corr_given_proved, f"{p}/width": self.width,
                f"{p}/time": self.time}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _chunk_size(net: Any, goal: Any, batch: int, dtype_bytes: int) -> int:
    """How many examples to analyse at once so the values fit ABSNET_EVAL_MEMORY_GIB (default 2)."""
    analysis = getattr(goal, "analysis", None)
    if analysis is None or analysis.kind == "point":
        return batch
    budget = float(os.environ.get("ABSNET_EVAL_MEMORY_GIB", "2")) * 2**30
    return max(1, min(batch, int(budget // max(net.bytes_per_example(analysis, dtype_bytes), 1))))


def evaluate(
    net: Any, tests: Sequence[Any], batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | Any, *,
    epsilon: float, time_: float = 0.0, seed: int = 0, progress: Any = None, gather: bool = False,
) -> list[GoalReport]:
    """Run every test goal over ``batches`` (a re-iterable of (x, y), e.g. a Loader's epoch factory).

    Args:
        net: the AbstractNetwork (put in eval mode here; the caller restores the mode).
        tests: resolved single-valued goals.
        batches: a callable returning an iterator of batches, or a list of batches.
        epsilon: the ambient width the goals use when they have no ``w`` of their own.
        time_: the training time schedules inside test goals are evaluated at.
        seed: seeds the randomness of attacks (restarts), so a report is reproducible.
        progress: optional callable ``progress(goal_text, done, total)``.
        gather: every rank of a process group evaluated its own part of the test set (a Loader with
            ``rank``/``world``): sum the counts over the ranks, so every rank returns the whole report
            (``time`` is the slowest rank's).
    """
    was_training = net.training
    net.eval()
    reports = []
    try:
        for goal in tests:
            reports.append(_evaluate_goal(net, goal, batches, epsilon, time_, seed, progress, gather))
    finally:
        net.train(was_training)
    return reports


def _evaluate_goal(net: Any, goal: Any, batches: Any, epsilon: float, time_: float, seed: int,
                   progress: Any, gather: bool = False) -> GoalReport:
    gen = torch.Generator().manual_seed(seed)
    ctx = GoalContext(net=net, time=time_, epsilon=epsilon, rng=random.Random(seed), generator=gen)
    n = clean = safe = proved = 0
    width = 0.0
    analysis = "?"
    start = time.perf_counter()
    items = batches() if callable(batches) else batches
    for x, y in items:
        if not x.shape[0]:  # an empty part of a split test batch
            continue
        with torch.no_grad():
            pred = net(x).argmax(dim=1)
        step = _chunk_size(net, goal, x.shape[0], x.element_size())
        for i in range(0, x.shape[0], step):
            xs, ys, ps = x[i:i + step], y[i:i + step], pred[i:i + step]
            out = test_outcome(goal, ctx, xs, ys, ps)
            analysis = out.analysis
            proved += int(out.proved.sum())
            safe += int(out.safe.sum())
            width += float(out.width.sum())
        clean += int((pred == y).sum())
        n += x.shape[0]
        if progress is not None:
            progress(str(goal), n)
    elapsed = time.perf_counter() - start
    if gather:
        from absnet.train.distributed import all_reduce_max, all_reduce_sum

        counts = all_reduce_sum(torch.tensor([n, clean, safe, proved, width], dtype=torch.float64))
        n, clean, safe, proved = (round(float(v)) for v in counts[:4])
        width = float(counts[4])
        elapsed = all_reduce_max(elapsed)  # rank 0 always has examples, so its analysis name is the report's
    frac = (lambda k: k / n) if n else (lambda k: math.nan)
    return GoalReport(
        goal=str(goal), analysis=analysis, n=n, clean=frac(clean), safe=frac(safe), proved=frac(proved),
        corr_given_proved=safe / proved if proved else math.nan, width=width / n if n else math.nan,
        time=elapsed, epsilon=epsilon,
    )


def format_table(reports: Sequence[GoalReport]) -> str:
    """The reports as an aligned text table (percentages)."""
    head = ("test goal", "analysis", "eps", "n", "clean", "Pr[Corr&Proved]", "Pr[Proved]", "Pr[Corr|Proved]",
            "width", "time")
    rows = [head]
    for r in reports:
        rows.append((r.goal, r.analysis, f"{r.epsilon:g}", str(r.n), _pct(r.clean), _pct(r.safe), _pct(r.proved),
                     _pct(r.corr_given_proved), f"{r.width:.4g}", f"{r.time:.1f}s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _pct(v: float) -> str:
    return "n/a" if v != v else f"{100 * v:.2f}%"
