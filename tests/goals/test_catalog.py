"""The goal catalog: resolution from the DSL (never eval), display text, and every error users see."""

from __future__ import annotations

import pytest

from absnet.diagnostics import AbsnetError
from absnet.goals.abstract import AbstractGoal
from absnet.goals.attacks import Attack
from absnet.goals.catalog import GOAL_ALIASES, GOALS, check_test_goal, parse_goal, resolve_goal
from absnet.goals.schedules import Lin
from absnet.grammar.parser import parse_expr
from absnet.ir.domains import ANALYSES


def errors(text: str) -> list:
    with pytest.raises(AbsnetError) as e:
        parse_goal(text)
    return e.value.diagnostics


def with_required(name: str) -> str:
    spec = GOALS[GOAL_ALIASES.get(name, name)]
    return f"{name}({', '.join(f'{p.name}=0.5' for p in spec.params if p.required)})"


@pytest.mark.parametrize("name", [*GOALS, *GOAL_ALIASES])
def test_every_goal_resolves_with_its_defaults_and_its_text_reparses(name: str) -> None:
    goal = parse_goal(with_required(name))
    text = str(goal)
    assert str(parse_goal(text)) == text
    if not any(p.required for p in GOALS[GOAL_ALIASES.get(name, name)].params):
        assert str(parse_goal(name)) == text  # a bare name is a call without arguments


@pytest.mark.parametrize("text", [
    "LinMix(a=IFGSM(k=2), b=Box(), bw=0.1)",
    "LinMix(a=IFGSM(k=2), b=InSamp(sub=Lin(0, 1, 150, 10)), bw=Lin(0, 0.5, 150, 10))",
    "DList((IFGSM(w=0.1), 1), (Box(w=0.01), 0.1), (Box(w=0.1), 0.01))",
    "PGD(r=3, k=16, restart=2, w=0.1)",
    "AdvDom(a=IFGSM(), b=DList((PointB(), 1), (PointA(), 1), (Box(), 0.2)))",
    "Mix(a=PGD(r=3, k=16, restart=2, w=0.1), b=BiAdv(a=IFGSM(k=5, w=0.05)), bw=0.1)",
    "HBox(w=0.3, tot_weight=2, width_weight=Lin(0, 1, 10), pow_loss=2, log_loss=true, cross_loss=false)",
    "MI_FGSM(k=20, r=2, mu=0.5, should_end=false, restart=none)",
    "Coin(a=PointA(), b=NormalPoint(w=0.2), ap=0.3, bp=0.7)",
    "DProb((Point(), 0.8), (HBox(), 0.2))",
    "AdvInclusion(sub=0.4, a=PGD(k=8, r=2), b=ZNIPS())",
    "NormalAdv(a=PGD(k=2), w=Lin(0, 0.1, 5))",
])
def test_display_text_is_the_resolved_call(text: str) -> None:
    assert str(parse_goal(text)) == text


def test_display_text_normalises_what_was_written() -> None:
    assert str(parse_goal("InSamp(Lin(0,1,150,10), w=0.10)")) == "InSamp(sub=Lin(0, 1, 150, 10), w=0.1)"
    assert str(parse_goal("DeepZ")) == "ZNIPS()"
    assert str(parse_goal("  PGD( k = 2 ) ")) == "PGD(k=2)"


def test_resolved_goals_carry_their_arguments() -> None:
    g = parse_goal("HBox(w=Lin(0, 0.1, 10), pow_loss=2)")
    assert isinstance(g, AbstractGoal) and g.analysis is ANALYSES["HBox"]
    assert g.w == Lin(0.0, 0.1, 10.0) and g.pow_loss == 2.0 and g.cross_loss
    pgd = parse_goal("PGD(k=16, r=3)")
    assert isinstance(pgd, Attack) and (pgd.k, pgd.r, pgd.mu) == (16, 3.0, 0.0)
    ifgsm = parse_goal("IFGSM")
    assert (ifgsm.k, ifgsm.r, ifgsm.mu) == (5, 1.0, 0.0)
    fgsm = parse_goal("FGSM(w=0.2)")
    assert (fgsm.k, fgsm.r, fgsm.mu) == (1, 1.0, 0.0)
    mi = parse_goal("MI_FGSM")
    assert (mi.k, mi.r, mi.mu, mi.should_end, mi.restart) == (100, 20.0, 0.8, True, None)
    lm = parse_goal("LinMix()")
    assert [str(g) for g in lm.children()] == ["Point()", "Box()"]


def test_resolve_goal_from_an_expression_with_parameters() -> None:
    g = resolve_goal(parse_expr("Box(w=eps / 2)"), {"eps": 0.2}, "train T")
    assert str(g) == "Box(w=0.1)"
    with pytest.raises(AbsnetError) as e:
        resolve_goal(parse_expr("Box(w=epz)"), {"eps": 0.2}, "train T")
    (d,) = e.value.diagnostics
    assert d.code == "E207" and "did you mean 'eps'" in (d.help or "")


def test_unknown_goal_suggests_the_closest_name() -> None:
    (d,) = errors("HBx(w=0.1)")
    assert d.code == "E201" and "unknown goal 'HBx'" in d.message and d.help == "did you mean 'HBox'?"
    assert (d.span.column, d.span.end_column) == (1, 4)


def test_normal_is_a_schedule_and_the_goal_is_normal_point() -> None:
    (d,) = errors("Normal(w=0.3)")
    assert d.code == "E201" and "schedule" in d.message and "NormalPoint" in (d.help or "")
    (d,) = errors("Lin(0, 1, 10)")
    assert d.code == "E201" and "'Lin' is a schedule" in d.message


def test_misspelled_argument_suggests_and_shows_the_signature() -> None:
    (d,) = errors("Box(width=0.1)")
    assert d.code == "E202" and "Box has no argument 'width'" in d.message
    assert d.help == "did you mean 'w'?"
    assert any(n.startswith("Box takes: w=none, tot_weight=1") for n in d.notes)
    (d,) = errors("PGD(restrat=2)")
    assert d.code == "E202" and d.help == "did you mean 'restart'?"


def test_fixed_attack_arguments_are_rejected_with_a_reason() -> None:
    (d,) = errors("PGD(mu=0.5)")
    assert d.code == "E202" and "MI_FGSM" in (d.help or "")
    (d,) = errors("IFGSM(r=2)")
    assert d.code == "E202" and "PGD(r=...)" in (d.help or "")
    (d,) = errors("FGSM(k=3)")
    assert d.code == "E202" and "IFGSM(k=...)" in (d.help or "")


def test_wrong_kinds_and_ranges_are_all_reported() -> None:
    diags = errors("MI_FGSM(k=2.5, restart=0, should_end=1, r=Lin(0, 1, 2), w=-0.1)")
    assert [d.code for d in diags] == ["E206"] * 5
    text = "\n".join(d.message for d in diags)
    assert "'k' of MI_FGSM expects a positive integer, got 2.5" in text
    assert "'restart' of MI_FGSM must be >= 1, but got 0" in text
    assert "'should_end' of MI_FGSM expects true or false, got 1" in text
    assert "'r' of MI_FGSM expects a number, not a call to 'Lin'" in text
    assert "'w' of MI_FGSM must be >= 0, but got -0.1" in text
    (d,) = errors("LinMix(bw=Lin(0, 2, 10))")
    assert d.code == "E206" and "[0, 1]" in d.message and "ranges over [0, 2]" in d.message
    (d,) = errors("InSamp(sub=1.5)")
    assert d.code == "E206"
    (d,) = errors("InSamp()")
    assert d.code == "E205" and "'sub'" in d.message
    diags = errors("Mix(a=0.1, bw=Box())")
    assert [d.code for d in diags] == ["E206", "E206"]
    assert "expects a goal" in diags[0].message and "not the goal 'Box'" in diags[1].message
    (d,) = errors("Box(w=0.1, w=0.2)")
    assert d.code == "E204"
    (d,) = errors("IFGSM(w=0.1, 3)")
    assert d.code == "E209"
    (d,) = errors("Point(1)")
    assert d.code == "E208"
    (d,) = errors("0.5")
    assert d.code == "E206" and "expected a goal" in d.message


def test_malformed_dlist_pairs() -> None:
    diags = errors("DList(Box(), (Point(), 1, 2), (Box(), -1), (Lin(0, 1, 2), 1), w=1)")
    assert [d.code for d in diags] == ["E206", "E206", "E206", "E201", "E202"]
    assert "expects (goal, weight) pairs, got 'Box'" in diags[0].message
    assert "got a tuple" in diags[1].message
    assert "the weight of a DList pair must be >= 0, but got -1" in diags[2].message
    assert "'Lin' is a schedule" in diags[3].message
    assert "takes only positional" in diags[4].notes[0]
    (d,) = errors("DProb((Box(), Lin(0, 1, 2)))")
    assert d.code == "E206" and "plain numbers" in d.message
    (d,) = errors("DProb((Box(), 0), (Point(), 0))")
    assert d.code == "E206" and "positive sum" in d.message


def test_sub_goals_that_cannot_play_their_role() -> None:
    diags = errors("AdvDom(a=Box(), b=IFGSM())")
    assert [d.code for d in diags] == ["E206", "E206"]
    assert "'a' of AdvDom must produce a point, but Box() gives an abstract region" in diags[0].message
    assert "'b' of AdvDom must build a region between two images, but IFGSM() cannot" in diags[1].message
    for text in ("BiAdv(b=DProb())", "AdvDom(b=DList((IFGSM(), 1), (Box(), 1)))", "AdvDom(b=AdvInclusion(0.5))"):
        (d,) = errors(text)
        assert d.code == "E206" and "between two images" in d.message, text
    for text in ("NormalAdv(a=DList())", "AdvInclusion(0.5, a=HBox())", "BiAdv(a=InSamp(0.5))"):
        (d,) = errors(text)
        assert d.code == "E206" and "must produce a point" in d.message, text
    # these work: point sub-goals, a DList of between-capable members, a point-producing builder
    for text in ("AdvDom(a=NormalAdv(), b=DList((PointB(), 1), (Box(), 1)))", "BiAdv(a=Point(), b=InSamp(0.5))",
                 "AdvInclusion(0.2, a=InSamp(0.5, a=PGD()))"):
        parse_goal(text)


def test_combinators_are_rejected_as_test_goals() -> None:
    for text in ("Mix()", "LinMix(a=IFGSM(), b=Box())", "DList()", "Coin()", "AdvDom(b=Mix())"):
        with pytest.raises(AbsnetError) as e:
            check_test_goal(parse_goal(text), None)
        (d,) = e.value.diagnostics
        assert d.code == "E206" and "cannot be a test goal" in d.message, text
    for text in ("HBox()", "PGD(k=20, r=2)", "InSamp(0.5)", "AdvDom()", "Point()"):
        assert check_test_goal(parse_goal(text), None)


def test_errors_render_with_the_goal_text_as_source() -> None:
    with pytest.raises(AbsnetError) as e:
        parse_goal("LinMix(a=IFGSM(mu=1), b=Bx())")
    text = str(e.value)
    assert "<goal>:1:16: error[E202]: IFGSM has no argument 'mu'" in text
    assert "1 | LinMix(a=IFGSM(mu=1), b=Bx())" in text
    assert "error[E201]: unknown goal 'Bx'" in text


def test_syntax_errors_are_reported_not_raised_as_python_errors() -> None:
    with pytest.raises(AbsnetError) as e:
        parse_goal("Box(w=0.1")
    assert e.value.diagnostics[0].code.startswith("E1")
