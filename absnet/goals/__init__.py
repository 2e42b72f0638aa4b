"""absnet.goals: training and test goals (reference/diffai.md §3) and schedules (§4).

The names below are loaded on first use, so importing :mod:`absnet.goals.schedules` (as the
compiler's front half does) stays cheap and free of import cycles.

>>> from absnet.goals import parse_goal
>>> str(parse_goal("Mix(a=PGD(k=2), b=HBox(), bw=0.5)"))
'Mix(a=PGD(k=2), b=HBox(), bw=0.5)'
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GoalContext": "base", "Term": "base", "Goal": "base",
    "GOALS": "catalog", "resolve_goal": "catalog", "parse_goal": "catalog", "check_test_goal": "catalog",
    "goal_loss": "loss", "test_outcome": "loss", "Outcome": "loss",
    "LinearGoal": "linear", "CrownIbpGoal": "linear", "ibp_margin_lower": "linear",
    "margin_cross_entropy": "linear",
    "Schedule": "schedules", "resolve_schedule": "schedules",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'absnet.goals' has no attribute '{name}'")
    return getattr(importlib.import_module(f"absnet.goals.{module}"), name)
