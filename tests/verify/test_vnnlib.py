"""The VNN-LIB reader and writers: real-looking files, round trips, and every error located (E504)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from absnet.diagnostics import AbsnetError
from absnet.verify.vnnlib import (
    Case,
    Disjunct,
    Property,
    format_property,
    parse_vnnlib,
    read_vnnlib,
    robustness_property,
    write_robustness,
    write_vnnlib,
)

ACAS_PROP_3 = """; ACAS Xu property 3 (as in VNN-COMP's acasxu benchmark)
; Unsafe if COC is minimal
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const X_2 Real)
(declare-const X_3 Real)
(declare-const X_4 Real)

(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(declare-const Y_3 Real)
(declare-const Y_4 Real)

; Input constraints:
(assert (<= X_0 -0.298552812))
(assert (>= X_0 -0.303531156))

(assert (<= X_1 0.009549297))
(assert (>= X_1 -0.009549297))

(assert (<= X_2 0.5))
(assert (>= X_2 0.493380324))

(assert (<= X_3 0.5))
(assert (>= X_3 0.3))

(assert (<= X_4 0.5))
(assert (>= X_4 0.3))

; unsafe if COC is minimal
(assert (<= Y_0 Y_1))
(assert (<= Y_0 Y_2))
(assert (<= Y_0 Y_3))
(assert (<= Y_0 Y_4))
"""

ACAS_PROP_6 = """; ACAS Xu property 6: two input boxes in one disjunction
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(assert (or
    (and (<= X_0 0.700434925) (>= X_0 -0.129289109) (<= X_1 -0.111408460) (>= X_1 -0.499999896))
    (and (<= X_0 0.700434925) (>= X_0 -0.129289109) (<= X_1 0.499999896) (>= X_1 0.111408460))
))
; unsafe if COC is not minimal
(assert (or
    (and (<= Y_1 Y_0))
    (and (<= Y_2 Y_0))
))
"""

MNISTFC = """; mnistfc-style robustness property (label 1, 4 pixels)
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const X_2 Real)
(declare-const X_3 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(assert (<= X_0 0.05))
(assert (>= X_0 0.0))
(assert (<= X_1 0.55))
(assert (>= X_1 0.45))
(assert (<= X_2 1.0))
(assert (>= X_2 0.95))
(assert (<= X_3 0.30000000000000004))
(assert (>= X_3 0.2))
(assert (or
    (and (>= Y_0 Y_1))
    (and (>= Y_2 Y_1))
))
"""


def test_acas_property_3_is_one_box_and_one_conjunction_of_four_rows() -> None:
    p = parse_vnnlib(ACAS_PROP_3, "prop_3.vnnlib")
    assert (p.num_inputs, p.num_outputs, len(p.cases)) == (5, 5, 1)
    c = p.cases[0]
    assert c.lower.tolist() == [-0.303531156, -0.009549297, 0.493380324, 0.3, 0.3]
    assert c.upper.tolist() == [-0.298552812, 0.009549297, 0.5, 0.5, 0.5]
    (dj,) = c.disjuncts
    want = np.array([[1.0, -1, 0, 0, 0], [1, 0, -1, 0, 0], [1, 0, 0, -1, 0], [1, 0, 0, 0, -1]])
    assert np.array_equal(dj.C, want) and dj.d.tolist() == [0.0] * 4 and not dj.strict.any()


def test_acas_property_6_gives_two_boxes_each_with_both_disjuncts() -> None:
    p = parse_vnnlib(ACAS_PROP_6)
    assert len(p.cases) == 2
    assert [c.lower[1] for c in p.cases] == [-0.499999896, 0.111408460]
    assert [c.upper[1] for c in p.cases] == [-0.111408460, 0.499999896]
    for c in p.cases:
        assert [dj.C.tolist() for dj in c.disjuncts] == [[[-1.0, 1.0, 0.0]], [[-1.0, 0.0, 1.0]]]


def test_mnistfc_style_robustness_reads_as_written() -> None:
    p = parse_vnnlib(MNISTFC)
    c = p.cases[0]
    assert c.lower.tolist() == [0.0, 0.45, 0.95, 0.2] and c.upper.tolist() == [0.05, 0.55, 1.0, 0.30000000000000004]
    assert [dj.C.tolist() for dj in c.disjuncts] == [[[-1.0, 1.0, 0.0]], [[0.0, 1.0, -1.0]]]  # Y_1 − Y_j ≤ 0


def test_linear_terms_numbers_and_relations() -> None:
    text = """(declare-const X_0 Real)(declare-const Y_0 Real)(declare-const Y_1 Real)(declare-const Y_2 Real)
(assert (>= X_0 (- 0.5))) (assert (<= (* 2 X_0) 1e-1))
(assert (<= (+ (* 2 Y_0) (* Y_1 -3) (/ Y_2 4)) 1.5))
(assert (> (- Y_0 Y_1 Y_2) (- 2)))
(assert (= (- Y_2) 0.25))"""
    c = parse_vnnlib(text).cases[0]
    assert c.lower.tolist() == [-0.5] and c.upper.tolist() == [0.05]
    (dj,) = c.disjuncts
    assert dj.C.tolist() == [[2.0, -3.0, 0.25], [-1.0, 1.0, 1.0], [0.0, 0.0, -1.0], [0.0, 0.0, 1.0]]
    assert dj.d.tolist() == [1.5, 2.0, 0.25, -0.25] and dj.strict.tolist() == [False, True, False, False]


def test_tightest_bound_wins_and_an_empty_box_is_dropped() -> None:
    text = """(declare-const X_0 Real)(declare-const Y_0 Real)
(assert (>= X_0 0)) (assert (>= X_0 0.25)) (assert (<= X_0 1)) (assert (<= X_0 0.75))
(assert (or (and (>= X_0 0.9)) (and (<= X_0 0.5))))
(assert (<= Y_0 0))"""
    p = parse_vnnlib(text)
    assert len(p.cases) == 1 and p.cases[0].lower.tolist() == [0.25] and p.cases[0].upper.tolist() == [0.5]


def test_write_robustness_round_trips_the_ball_clipped_to_the_range(tmp_path: Path) -> None:
    x = np.array([[0.0, 0.3], [0.999, 0.5]])
    p = read_vnnlib(write_robustness(tmp_path / "r.vnnlib", x, 2, 0.01, 4))
    c = p.cases[0]
    assert (p.num_inputs, p.num_outputs) == (4, 4)
    assert c.lower.tolist() == np.clip(x.reshape(-1) - 0.01, 0, 1).tolist()
    assert c.upper.tolist() == np.clip(x.reshape(-1) + 0.01, 0, 1).tolist()
    assert len(c.disjuncts) == 3
    for dj, j in zip(c.disjuncts, (0, 1, 3)):
        want = np.zeros((1, 4))
        want[0, 2], want[0, j] = 1.0, -1.0  # Y_2 − Y_j ≤ 0: class j at least as high as the label
        assert np.array_equal(dj.C, want) and dj.d.tolist() == [0.0]
    assert robustness_property(x, 2, 0.01, 4, None).cases[0].lower.tolist()[0] == -0.01


def test_any_property_round_trips_exactly_through_the_writer(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for trial in range(20):
        n_in, n_out = int(rng.integers(1, 5)), int(rng.integers(1, 4))
        cases = []
        for _ in range(int(rng.integers(1, 4))):
            lo = rng.normal(size=n_in) * 10 ** float(rng.integers(-8, 3))
            ds = tuple(Disjunct(rng.normal(size=(m, n_out)), rng.normal(size=m) * 1e-7, rng.random(m) < 0.3)
                       for m in rng.integers(1, 3, size=int(rng.integers(1, 4))))
            cases.append(Case(lo, lo + rng.random(n_in), ds))
        prop = Property(n_in, n_out, tuple(cases))
        back = read_vnnlib(write_vnnlib(tmp_path / f"p{trial}.vnnlib", prop))
        assert len(back.cases) == len(prop.cases)
        for a, b in zip(prop.cases, back.cases):
            assert np.array_equal(a.lower, b.lower) and np.array_equal(a.upper, b.upper)
            assert len(a.disjuncts) == len(b.disjuncts)
            for da, db in zip(a.disjuncts, b.disjuncts):
                assert np.array_equal(da.C, db.C) and np.array_equal(da.d, db.d)
                assert np.array_equal(da.strict, db.strict)
        assert format_property(back) == format_property(prop)


HEAD = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
BOX = "(assert (>= X_0 0))\n(assert (<= X_0 1))\n"


@pytest.mark.parametrize("text, where, message", [
    (HEAD + BOX + "(assert (<= Y_1 0))\n", "p.vnnlib:5:13", "unknown variable 'Y_1'"),
    (HEAD + BOX + "(assert (<= (* Y_0 Y_0) 0))\n", "p.vnnlib:5:13", "non-linear term"),
    (HEAD + BOX + "(assert (<= Y_0 0)))\n", "p.vnnlib:5:20", "')' closes nothing"),
    (HEAD + BOX + "(assert (<= Y_0 0)\n", "p.vnnlib:5:1", "'(' is never closed"),
    (HEAD + "(assert (>= X_0 0))\n(assert (<= Y_0 0))\n", "p.vnnlib:1:1", "X_0 has no upper bound"),
    (HEAD + "(assert (<= X_0 0))\n", "p.vnnlib:1:1", "X_0 has no lower bound"),
    (HEAD + BOX + "(check-sat)\n(push 1)\n", "p.vnnlib:6:2", "unknown command 'push'"),
    (HEAD + BOX + "(assert (not (<= Y_0 0)))\n", "p.vnnlib:5:10", "unknown relation 'not'"),
    (HEAD + BOX + "(assert (<= X_0 Y_0))\n", "p.vnnlib:5:9", "mixes inputs and outputs"),
    ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n" + BOX
     + "(assert (<= X_1 X_0))\n", "p.vnnlib:6:9", "relates several inputs"),
    ("(declare-const X_0 Int)\n", "p.vnnlib:1:20", "sort 'Int', expected Real"),
    ("(declare-const input Real)\n", "p.vnnlib:1:16", "unknown variable 'input'"),
    ("(declare-const X_1 Real)\n(declare-const Y_0 Real)\n", "p.vnnlib:1:1", "X_0 is not declared, but X_1 is"),
    (HEAD + BOX + "(assert (<= Y_0 0.5.1))\n", "p.vnnlib:5:17", "unknown variable '0.5.1'"),
    (HEAD + BOX + "(assert (<= Y_0 (exp 1)))\n", "p.vnnlib:5:18", "unknown function 'exp'"),
    (HEAD + HEAD, "p.vnnlib:3:16", "X_0 is declared twice"),
    ("(declare-const Y_0 Real)\n", "p.vnnlib:1:1", "no input X_i is declared"),
    (HEAD + BOX + "(assert (<= Y_0 (/ 1 Y_0)))\n", "p.vnnlib:5:17", "divides by a non-zero number only"),
    (HEAD + BOX + "(assert (<= Y_0))\n", "p.vnnlib:5:9", "compares exactly two terms"),
])
def test_every_error_is_e504_located_with_a_caret(text: str, where: str, message: str) -> None:
    with pytest.raises(AbsnetError) as e:
        parse_vnnlib(text, "p.vnnlib")
    out = str(e.value)
    assert out.startswith(f"{where}: error[E504]: ") and message in out.splitlines()[0], out
    assert "^" in out  # the offending line is quoted with a caret


def test_an_unreadable_file_is_e604(tmp_path: Path) -> None:
    with pytest.raises(AbsnetError, match=r"E604.*cannot read"):
        read_vnnlib(tmp_path / "missing.vnnlib")
