"""The grammar: every DESIGN §2 example parses; values, spans and syntax errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from absnet.diagnostics import AbsnetError
from absnet.grammar import ast
from absnet.grammar.parser import parse_expr, parse_text, unclosed_bracket

DATA = Path(__file__).parents[1] / "data"


def test_design_section2_example_parses_as_one_text() -> None:
    module = parse_text((DATA / "design_section2.absnet").read_text(), "design.absnet")
    kinds = [(type(it).__name__, it.name) for it in module.items]
    assert kinds == [
        ("NetworkDef", "ConvSmall"), ("NetworkDef", "FFNN"), ("BlockDef", "Wide"),
        ("TrainDef", "ConvSmallMNIST"),
    ]
    train = module.items[3]
    assert isinstance(train, ast.TrainDef)
    assert [s.key for s in train.settings] == [
        "network", "data", "epsilon", "goal", "test", "optimizer", "epochs", "seed",
    ]
    assert train.imports[0].path == "../models/conv_small.absnet"
    test = next(s for s in train.settings if s.key == "test")
    assert [v.name for v in test.values] == ["MI_FGSM", "HBox"]


@pytest.mark.parametrize("path", sorted(DATA.rglob("*.absnet")), ids=lambda p: p.name)
def test_every_data_file_parses(path: Path) -> None:
    assert parse_text(path.read_text(), str(path)).items


def test_network_parameters_repeat_and_branches_have_their_structure() -> None:
    module = parse_text((DATA / "design_section2.absnet").read_text())
    ffnn = module.items[1]
    assert isinstance(ffnn, ast.NetworkDef)
    assert [(p.name, p.default.value) for p in ffnn.params] == [("width", 100), ("depth", 5)]
    rep = ffnn.body[2]
    assert isinstance(rep, ast.RepeatStmt) and rep.count == ast.Name("depth", rep.count.span)
    assert [s.call.name for s in rep.body] == ["Linear", "ReLU"]
    wide = module.items[2]
    add = wide.body[0]
    assert isinstance(add, ast.CombineStmt) and add.call.name == "Add" and len(add.branches) == 2
    assert [s.call.name for s in add.branches[0].body] == ["Conv2d", "ReLU", "Conv2d"]


@pytest.mark.parametrize(
    ("text", "value"),
    [("10", 10), ("0.5", 0.5), ("1e-3", 0.001), ("-2", -2), ("-1.5e2", -150.0), (".25", 0.25),
     ('"a\\"b"', 'a"b'), ("'x'", "x"), ("true", True), ("false", False)],
)
def test_literals_parse_to_their_values(text: str, value: object) -> None:
    expr = parse_expr(text)
    assert expr.value == value and type(expr.value) is type(value)


def test_lists_tuples_calls_and_arithmetic() -> None:
    assert isinstance(parse_expr("none"), ast.NoneLit)
    assert isinstance(parse_expr("[1, 2,]"), ast.ListExpr)
    assert len(parse_expr("(1, 2)").items) == 2
    assert len(parse_expr("(1,)").items) == 1
    assert isinstance(parse_expr("(1)"), ast.Num)
    call = parse_expr("Lin(0, 1, steps=150, initial=10)")
    assert isinstance(call, ast.Call)
    assert [a.name for a in call.args] == [None, None, "steps", "initial"]
    expr = parse_expr("width * 2 + depth // 3")
    assert isinstance(expr, ast.BinOp) and expr.op == "+"
    assert expr.left.op == "*" and expr.right.op == "//"


def test_comments_and_newlines_are_insignificant() -> None:
    a = parse_text("network N{input[4]Linear(2)ReLU()}")
    b = parse_text("# header\nnetwork N {\n  input [4]   # the input\n  Linear(\n    2\n  )\n  ReLU()\n}\n")
    strip = [[type(s).__name__ for s in m.items[0].body] for m in (a, b)]
    assert strip[0] == strip[1] == ["InputStmt", "LayerStmt", "LayerStmt"]


def test_spans_point_at_the_source() -> None:
    module = parse_text("network N {\n  input [4]\n  Linear(10, bias=false)\n}", "f.absnet")
    call = module.items[0].body[1].call
    assert (call.span.file, call.span.line, call.span.column, call.span.end_column) == ("f.absnet", 3, 3, 25)
    assert (call.name_span.column, call.name_span.end_column) == (3, 9)
    kw = call.args[1]
    assert (kw.name_span.column, kw.value.span.column) == (14, 19)


def test_keywords_are_names_where_only_a_name_fits() -> None:
    call = parse_expr("f(input, range)")
    assert [a.value.name for a in call.args] == ["input", "range"]


@pytest.mark.parametrize(
    ("text", "code", "fragment"),
    [
        ("network N { Linear(10 20) }", "E101", "expected ')' or ','"),
        ("network N { ReLU Linear(3) }", "E101", "write ReLU()"),
        ("network N { Linear(out=) }", "E101", "expected a value"),
        ("network N { input [1] range [0 1] }", "E101", "expected ',' or ']'"),
        ("network N { Linear(10) ]", "E101", "expected a layer, 'input', 'repeat' or '}'"),
        ("network N { Linear(10) $ }", "E102", "unexpected character '$'"),
        ("network N { Linear(10)", "E103", "unclosed '{' opened at line 1"),
        ("network N { Linear(10", "E103", "unclosed '('"),
    ],
)
def test_syntax_errors_are_friendly(text: str, code: str, fragment: str) -> None:
    with pytest.raises(AbsnetError) as info:
        parse_text(text, "bad.absnet")
    (diag,) = info.value.diagnostics
    assert diag.code == code
    assert fragment in info.value.render()
    assert "bad.absnet:1:" in info.value.render()


def test_unclosed_bracket_ignores_strings_and_comments() -> None:
    assert unclosed_bracket('a { "{" # {\n }') is None
    assert unclosed_bracket("x\n  (") == ("(", 2, 3)
