"""Schedules (reference/diffai.md §4): values over time and resolution from DSL calls."""

from __future__ import annotations

import itertools
import random

import pytest

from absnet.diagnostics import AbsnetError
from absnet.goals.schedules import (
    SCHEDULES,
    Clip,
    Complement,
    Const,
    Lin,
    Normal,
    Scale,
    Until,
    resolve_schedule,
)
from absnet.grammar.parser import parse_expr


def sched(text: str, **env):
    return resolve_schedule(parse_expr(text), env)


def test_lin_keeps_start_until_initial_then_ramps_over_steps() -> None:
    s = sched("Lin(0, 0.031373, 150, 10)")  # 0 for 10 epochs, then 8/255 by epoch 160
    assert s == Lin(0.0, 0.031373, 150.0, 10.0)
    assert s.value(0) == 0.0 and s.value(10) == 0.0
    assert s.value(85) == pytest.approx(0.031373 / 2)
    assert s.value(160) == pytest.approx(0.031373) and s.value(1000) == pytest.approx(0.031373)


def test_lin_quant_floors_time_to_whole_epochs() -> None:
    s = sched("Lin(0, 1, 10, quant=true)")
    assert s.value(2.9) == pytest.approx(0.2)
    assert sched("Lin(0, 1, 10)").value(2.9) == pytest.approx(0.29)


def test_until_restarts_time_for_the_second_schedule() -> None:
    s = sched("Until(1, 0, Lin(0.5, 0, 50, 3))")  # 0 in epoch 1, then 0.5 for 3 epochs, then decay over 50
    assert isinstance(s, Until) and s.a == Const(0.0)
    assert s.value(0.5) == 0.0
    assert s.value(1.0) == 0.5 and s.value(4.0) == 0.5
    assert s.value(29.0) == pytest.approx(0.25)
    assert s.value(54.0) == 0.0 and s.value(100.0) == 0.0


def test_scale_mixlin_clip_complement_const() -> None:
    assert sched("Scale(0.5)").value(0) == pytest.approx(1.0)
    assert sched("Scale(0)").value(3) == 0.0
    mix = sched("MixLin(0, 0.5, 10)")
    assert mix == Scale(Lin(0.0, 0.5, 10.0)) and mix.value(10) == pytest.approx(1.0)
    assert sched("Clip(Lin(-1, 2, 3), 0, 1)").value(0) == 0.0
    assert sched("Clip(Lin(-1, 2, 3), 0, 1)").value(3) == 1.0
    assert sched("Complement(0.25)").value(0) == 0.75
    assert sched("Const(3)").value(7) == 3.0
    assert isinstance(sched("Complement(c=Lin(0, 1, 4))"), Complement)
    assert isinstance(sched("Clip(c=1, l=0, u=2)"), Clip)


def test_normal_needs_an_explicit_rng_and_is_half_normal() -> None:
    s = sched("Normal(2)")
    assert isinstance(s, Normal) and s.random
    with pytest.raises(ValueError):
        s.value(0)
    rng = random.Random(0)
    draws = [s.value(0, rng) for _ in range(200)]
    assert min(draws) >= 0 and max(draws) > 1
    assert sched("Until(1, Normal(1), 0)").random


def test_numbers_and_parameters() -> None:
    assert sched("0.1") == Const(0.1)
    assert sched("Lin(0, eps, steps)", eps=0.3, steps=5) == Lin(0.0, 0.3, 5.0)


def test_str_is_dsl_syntax_and_round_trips() -> None:
    for text in ["Lin(0, 0.031373, 150, 10)", "Until(1, 0, Lin(0.5, 0, 50, 3))", "Scale(Lin(0, 0.5, 10))",
                 "Clip(Normal(1), 0, 1)", "Complement(0.25)", "Lin(0, 1, 10, 0, true)"]:
        s = sched(text)
        assert str(s) == text
        assert sched(str(s)) == s


@pytest.mark.parametrize(
    ("text", "code", "fragment"),
    [
        ("Lni(0, 1, 10)", "E201", "did you mean 'Lin'?"),
        ("Lin(0, 1)", "E205", "missing its required argument 'steps'"),
        ("Lin(0, 1, 2, 3, true, 5)", "E208", "Lin takes at most 5 positional arguments, but 6 were given"),
        ("Lin(0, 1, 10, inital=3)", "E202", "did you mean 'initial'?"),
        ("Lin(0, 1, 10, steps=3)", "E204", "given twice"),
        ("Lin(0, true, 10)", "E206", "expects a number"),
        ("Lin(0, 1, 10, quant=1)", "E206", "expects true or false"),
        ("Lin(0, Lin(0, 1, 2), 10)", "E206", "may be schedules"),
        ("Lin(0, 1, 0)", "E206", "steps > 0"),
        ("Scale(1)", "E206", "0 <= c < 1"),
        ("Scale(Lin(0, 1, 10))", "E206", "ranges over [0, 1]"),
        ("Complement(2)", "E206", "0 <= c <= 1"),
        ("Until(1, 0, Lni(1, 2, 3))", "E201", "unknown schedule 'Lni'"),
        ('Scale("a")', "E206", 'got "a"'),
        ("Lin(0, x, 1)", "E207", "unknown name 'x'"),
    ],
)
def test_schedule_errors(text: str, code: str, fragment: str) -> None:
    with pytest.raises(AbsnetError) as info:
        sched(text)
    assert info.value.diagnostics[0].code == code
    assert fragment in info.value.render()


def test_all_problems_of_one_call_are_reported() -> None:
    with pytest.raises(AbsnetError) as info:
        sched("Lin(x, true, 10, qaunt=false)")
    assert [d.code for d in info.value.diagnostics] == ["E202", "E207", "E206"]


def test_catalog_lists_diffai_schedules() -> None:
    assert set(SCHEDULES) == {
        "Const", "Lin", "Until", "Scale", "MixLin", "Normal", "Clip", "Complement", "Smoothed",
    }


def _crown_ibp_smoothed(step: int, init: int, final: int, e0: float, e1: float) -> float:
    """CROWN-IBP's smoothed schedule in its own step units (reference/crown_ibp.md §1.8)."""
    if step <= init:
        return e0
    if step >= final:
        return e1
    mid = init + int(0.25 * (final - init))
    d = mid - init
    alpha = (e1 - e0) / ((final - mid) * 4 * d**3 + d * d**3)
    if step < mid:
        return e0 + alpha * (step - init) ** 4
    at_mid = e0 + alpha * d**4
    return at_mid + (e1 - at_mid) * (step - mid) / (final - mid)


def test_smoothed_matches_crown_ibp_formula_and_is_continuous() -> None:
    s = resolve_schedule(parse_expr("Smoothed(0, 0.4, 8, 2)"))
    for step in range(0, 121):
        t = step / 10  # 10 steps per epoch: init = 20, final = 100 steps
        assert s.value(t) == pytest.approx(_crown_ibp_smoothed(step, 20, 100, 0.0, 0.4), abs=1e-12)
    values = [s.value(i / 1000) for i in range(12001)]
    assert all(b >= a - 1e-15 for a, b in itertools.pairwise(values))  # monotone ramp
    assert max(abs(b - a) for a, b in itertools.pairwise(values)) < 1e-3  # no jumps
    assert str(s) == "Smoothed(0, 0.4, 8, 2)"


def test_smoothed_rejects_bad_mid() -> None:
    with pytest.raises(AbsnetError, match="mid"):
        resolve_schedule(parse_expr("Smoothed(0, 1, 10, 0, 1.5)"))
