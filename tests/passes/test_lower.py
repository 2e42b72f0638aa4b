"""Lowering AST → IR: attributes, parameters, paths of repeat/block/branch, spans, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from absnet.diagnostics import AbsnetError
from absnet.frontend import lower_network, parse_file
from absnet.goals.schedules import Lin

DATA = Path(__file__).parents[1] / "data"


def nodes(graph):
    return [(n.op, n.key) for n in graph.nodes()]


def codes(text: str, **kw) -> list[str]:
    with pytest.raises(AbsnetError) as info:
        lower_network(text, **kw)
    return [d.code for d in info.value.diagnostics]


@pytest.mark.parametrize("path", sorted((DATA / "models").glob("*.absnet")), ids=lambda p: p.stem)
def test_every_model_file_lowers(path: Path) -> None:
    module = parse_file(path)
    for name in module.networks():
        graph = lower_network(module, name)
        assert graph.input.op == "Input" and graph.output_id is not None


def test_conv_small_lowers_to_a_chain_with_complete_attributes() -> None:
    g = lower_network(parse_file(DATA / "models" / "conv_small.absnet"))
    assert nodes(g) == [
        ("Input", ""), ("Normalize", "0"), ("Conv2d", "1"), ("ReLU", "2"), ("Conv2d", "3"), ("ReLU", "4"),
        ("Flatten", "5"), ("Linear", "6"), ("ReLU", "7"), ("CorrelateAll", "8"), ("Linear", "9"),
    ]
    assert dict(g.input.attrs) == {"shape": (1, 28, 28), "low": 0.0, "high": 1.0}
    conv = g.node("n2")
    assert dict(conv.attrs) == {
        "out_channels": 16, "kernel_size": (4, 4), "stride": (2, 2), "padding": (0, 0), "dilation": (1, 1),
        "groups": 1, "bias": True,
    }
    assert dict(g.node("n1").attrs) == {"mean": (0.1307,), "std": (0.3081,)}
    assert dict(g.node("n9").attrs) == {"relu": None, "only_train": False}
    assert (conv.span.line, conv.span.column) == (5, 3)


def test_input_range_defaults_to_unit_interval_and_accepts_a_vector_shape() -> None:
    g = lower_network("network N { input [784] Linear(2) }")
    assert dict(g.input.attrs) == {"shape": (784,), "low": 0.0, "high": 1.0}
    g = lower_network("network N { input 10 range [-1, 1.5] }")
    assert dict(g.input.attrs) == {"shape": (10,), "low": -1.0, "high": 1.5}
    assert g.output_id == g.input_id


def test_parameterised_network_is_instantiated_from_args() -> None:
    text = """
    network ConvSmall(in_ch=1, size=28, classes=10) {
      input [in_ch, size, size]
      Conv2d(16, kernel=4, stride=2) ReLU()
      Flatten()
      Linear(classes)
    }"""
    g = lower_network(text)
    assert g.input.attrs["shape"] == (1, 28, 28) and g.output.attrs["out_features"] == 10
    g = lower_network(text, args={"in_ch": 3, "size": 32, "classes": 100})
    assert g.input.attrs["shape"] == (3, 32, 32) and g.output.attrs["out_features"] == 100
    assert g.params == {"in_ch": 3, "size": 32, "classes": 100}


def test_unknown_and_missing_network_args_are_errors() -> None:
    text = "network N(width, depth=2) { input [4] repeat depth { Linear(width) } }"
    with pytest.raises(AbsnetError) as info:
        lower_network(text, args={"widht": 3})
    msgs = {d.code: d for d in info.value.diagnostics}
    assert msgs["E202"].help == "did you mean 'width'?"
    assert "parameter 'width'" in msgs["E205"].message


def test_arithmetic_on_parameters() -> None:
    g = lower_network(
        "network N(w=10) { input [4] Linear(w * 2) Linear(w // 3 + 1) Linear(w / 2) Linear(-w + 11) }"
    )
    assert [n.attrs.get("out_features") for n in g.nodes()][1:] == [20, 4, 5, 1]


def test_repeat_paths_are_index_iteration_statement() -> None:
    g = lower_network(parse_file(DATA / "models" / "ffnn.absnet"), args={"depth": 2, "width": 7})
    assert nodes(g) == [
        ("Input", ""), ("Flatten", "0"), ("Linear", "1.0.0"), ("ReLU", "1.0.1"), ("Linear", "1.1.0"),
        ("ReLU", "1.1.1"), ("Linear", "2"),
    ]
    assert g.node("n2").attrs["out_features"] == 7
    assert nodes(lower_network(parse_file(DATA / "models" / "ffnn.absnet"), args={"depth": 0})) == [
        ("Input", ""), ("Flatten", "0"), ("Linear", "2"),
    ]


def test_block_and_branch_paths_and_edges() -> None:
    g = lower_network(parse_file(DATA / "models" / "wide.absnet"))
    by_key = {n.key: n for n in g.nodes()}
    block_keys = [k for k in by_key if k.startswith("1.")]
    assert block_keys == ["1.0.0.0", "1.0.0.1", "1.0.0.2", "1.0.1.0", "1.0", "1.1"]
    add = by_key["1.0"]
    assert add.op == "Add"
    assert add.inputs == (by_key["1.0.0.2"].id, by_key["1.0.1.0"].id)
    # both branches start from the block's input
    assert by_key["1.0.0.0"].inputs == by_key["1.0.1.0"].inputs == (by_key["0"].id,)
    assert by_key["2.0.0.0"].attrs["out_channels"] == 32  # Wide(ch * 2)
    concat = by_key["3"]
    assert concat.op == "Concat" and dict(concat.attrs) == {"axis": 1}
    # the empty branch is the identity: Concat reads the block input directly
    assert concat.inputs == (by_key["3.0.1"].id, by_key["2.1"].id)


def test_nodes_from_blocks_carry_the_inner_span_and_the_call_site() -> None:
    g = lower_network(parse_file(DATA / "models" / "wide.absnet"))
    inner = next(n for n in g.nodes() if n.key == "2.0.1.0")
    assert (inner.span.line, inner.span.column) == (4, 14)
    (site,) = inner.meta["call_sites"]
    assert (site.line, site.column) == (13, 3)


def test_nested_blocks_inside_repeat_compose_paths() -> None:
    text = """
    block Pair(w) { Linear(w) ReLU() }
    block Twice(w) { Pair(w) Pair(w + 1) }
    network N { input [4] repeat 2 { Twice(3) } Add { branch {} branch {} } }
    """
    g = lower_network(text)
    assert nodes(g)[1:5] == [("Linear", "0.0.0.0.0"), ("ReLU", "0.0.0.0.1"), ("Linear", "0.0.0.1.0"),
                             ("ReLU", "0.0.0.1.1")]
    assert ("Linear", "0.1.0.1.0") in nodes(g)
    add = g.output
    assert add.key == "1" and len(set(add.inputs)) == 1


def test_schedule_attributes_are_resolved() -> None:
    g = lower_network("network N(t=10) { input [4] DeepLoss(bw=Lin(0, 1, t)) IdentLoss(0.5) }")
    deep, ident = list(g.nodes())[1:]
    assert deep.attrs["bw"] == Lin(0.0, 1.0, 10.0)
    assert deep.attrs["act"] == "relu" and "only_train" not in deep.attrs
    assert ident.attrs["bw"] == 0.5


def test_directive_defaults_and_enum_names() -> None:
    g = lower_network("network N { input [1, 8, 8] Concretize() ToZono(relu=NIPS) "
                      "CorrMaxPool2D(2, max_type=only_beta) CorrMaxK(k=3) }")
    conc, tozono, pool, maxk = list(g.nodes())[1:]
    assert conc.attrs["only_train"] is True and tozono.attrs["only_train"] is False
    assert tozono.attrs["relu"] == "NIPS"
    assert pool.attrs["max_type"] == "only_beta" and pool.attrs["kernel_size"] == (2, 2)
    assert maxk.attrs["num_correlate"] == 3


def test_network_none_picks_the_last_network_and_names_are_checked() -> None:
    text = "network A { input [2] } network B { input [3] }"
    assert lower_network(text).name == "B"
    assert lower_network(text, "A").input.attrs["shape"] == (2,)
    with pytest.raises(AbsnetError) as info:
        lower_network(text, "C")
    assert info.value.diagnostics[0].code == "E201"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("input [4] Conv2D(3, 3)", ["E201"]),
        ("input [4] Linear(3, bias=false, bias=true)", ["E204"]),
        ("input [4] Conv2d(3, 3, kernel=2)", ["E204"]),
        ("input [4] Linear(3, true, 5)", ["E208"]),
        ("input [4] Linear(out_features=3, true)", ["E209"]),
        ("input [4] Linear(0)", ["E206"]),
        ("input [4] Linear(w)", ["E207"]),
        ("input [4] Linear(Lin(0, 1, 2))", ["E206"]),
        ('input [4] Linear("a" * 2)', ["E213"]),
        ("input [4] Linear(4 / 0)", ["E213"]),
        ("input [4] Add(x=1)", ["E212"]),
        ("input [4] Input([4])", ["E212"]),
        ("input [4] Linear(3) { branch {} }", ["E212"]),
        ("input [4] Add { }", ["E212"]),
        ("input [4] repeat -1 { ReLU() }", ["E206"]),
        ("input [0, 2]", ["E210"]),
        ("ReLU()", ["E210"]),
        ("input [4] input [4]", ["E210"]),
        ("input [4] Linear() Conv2D(1) ReLU(1)", ["E205", "E201", "E208"]),
    ],
)
def test_errors_have_their_codes_and_are_all_reported(body: str, expected: list[str]) -> None:
    assert codes(f"network N {{ {body} }}") == expected


def test_block_errors_are_reported_once_and_recursion_is_an_error() -> None:
    text = "block B(w) { Linaer(w) } network N { input [4] B(1) B(2) repeat 3 { B(3) } }"
    assert codes(text) == ["E201"]
    assert codes("block A { B() } block B { A() } network N { input [4] A() }") == ["E215"]


def test_errors_render_with_the_source_line() -> None:
    with pytest.raises(AbsnetError) as info:
        lower_network("network N {\n  input [4]\n  Linaer(3)\n}", file="m.absnet")
    assert info.value.render() == (
        "m.absnet:3:3: error[E201]: unknown layer 'Linaer'\n"
        "3 |   Linaer(3)\n"
        "  |   ^^^^^^\n"
        "note: run `absc ops` to list the layers and directives\n"
        "help: did you mean 'Linear'?"
    )
