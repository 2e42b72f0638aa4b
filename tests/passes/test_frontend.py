"""The frontend API: imports, checking everything at once, train blocks, analysis strings."""

from __future__ import annotations

from pathlib import Path

import pytest

from absnet.diagnostics import AbsnetError
from absnet.frontend import (
    check_source,
    collect_diagnostics,
    get_train,
    list_networks,
    list_trains,
    lower_network,
    parse_analysis,
    parse_file,
    parse_source,
)
from absnet.goals.schedules import Lin

DATA = Path(__file__).parents[1] / "data"


def test_train_spec_imports_its_model_and_is_checked() -> None:
    module = parse_file(DATA / "specs" / "conv_small_mnist.absnet")
    assert list_networks(module) == ["ConvSmall"]
    assert list_trains(module) == ["ConvSmallMNIST"]
    spec = get_train(module)
    assert (spec.network, spec.epsilon, spec.epochs, spec.seed) == ("ConvSmall", 0.1, 200, 1)
    assert [g.name for g in spec.goals] == ["LinMix"]
    assert [t.name for t in spec.tests] == ["MI_FGSM", "HBox"]
    assert spec.data.name == "mnist" and spec.optimizer.name == "Adam"
    graph = lower_network(module, spec.network, spec.network_args)
    assert graph.name == "ConvSmall"
    check_source(module)


def test_train_epsilon_schedule_and_network_args() -> None:
    text = """
    network FFNN(width=100) { input [4] Linear(width) }
    train T { network FFNN(width=20) epsilon Lin(0, 0.3, 10, 2) test Box(), HBox() test PGD() }
    """
    spec = get_train(text)
    assert spec.epsilon == Lin(0.0, 0.3, 10.0, 2.0)
    assert spec.network_args == {"width": 20}
    assert [t.name for t in spec.tests] == ["Box", "HBox", "PGD"]


def test_train_errors_are_collected() -> None:
    text = (
        "network Net { input [4] }\n"
        "train T { network Nett epoch 3 epochs 0 epochs 2 seed true epsilon -1 }"
    )
    with pytest.raises(AbsnetError) as info:
        get_train(text)
    assert sorted(d.code for d in info.value.diagnostics) == ["E201", "E204", "E206", "E206", "E206", "E216"]


def test_imports_are_relative_transitive_and_cycle_safe(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    blocks = 'import "../main.absnet"\nblock Two(w) { Linear(w) ReLU() }'
    (tmp_path / "lib" / "blocks.absnet").write_text(blocks)
    (tmp_path / "lib" / "nets.absnet").write_text('import "blocks.absnet"\nnetwork Lib { input [4] Two(3) }')
    main = tmp_path / "main.absnet"
    main.write_text('import "lib/nets.absnet"\nnetwork Main { input [4] Two(5) }')
    module = parse_file(main)
    assert list_networks(module) == ["Lib", "Main"]
    assert lower_network(module).name == "Main"
    assert lower_network(module, "Lib").output.key == "0.1"
    assert collect_diagnostics(module)[0] == []


def test_missing_import_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AbsnetError) as info:
        parse_source('import "nowhere.absnet"\nnetwork N { input [1] }', str(tmp_path / "x.absnet"))
    assert info.value.diagnostics[0].code == "E214"
    assert 'import "nowhere.absnet"' in info.value.render()


def test_duplicate_definitions_are_errors(tmp_path: Path) -> None:
    (tmp_path / "a.absnet").write_text("network N { input [1] }")
    text = 'import "a.absnet"\nnetwork N { input [2] }'
    diags, _ = collect_diagnostics(text, str(tmp_path / "b.absnet"))
    assert [d.code for d in diags] == ["E211"]
    with pytest.raises(AbsnetError):
        lower_network(text, file=str(tmp_path / "b.absnet"))


def test_check_reports_every_problem_in_one_run() -> None:
    text = """
    block B(ch) { Conv2d(ch, kernal=3) Relu() }
    network N(w) { input [4] Linear(w) Linaer(2) B(4) }
    network M { input [4] Linear(q) }
    """
    diags, sources = collect_diagnostics(text, "x.absnet")
    assert [d.code for d in diags] == ["E202", "E201", "E201", "E207"]
    assert "x.absnet" in sources.texts
    with pytest.raises(AbsnetError) as info:
        check_source(text, "x.absnet")
    assert len(info.value.diagnostics) == 4


def test_clean_source_checks_clean() -> None:
    assert collect_diagnostics((DATA / "models" / "wide.absnet").read_text())[0] == []


@pytest.mark.parametrize(
    ("text", "name", "kind", "relu", "pure"),
    [
        ("Box", "Box", "box", "Boxy", False),
        ("Box()", "Box", "box", "Boxy", False),
        ("IBP()", "Box", "box", "Boxy", False),
        ("HBox()", "HBox", "zonotope", "Boxy", False),
        ('ZBox(relu="NIPS")', "ZBox", "zonotope", "NIPS", True),
        ("HBox(relu=Switch)", "HBox", "zonotope", "Switch", False),
        ("  Point  ", "Point", "point", "Boxy", False),
    ],
)
def test_parse_analysis(text: str, name: str, kind: str, relu: str, pure: bool) -> None:
    a = parse_analysis(text)
    assert (a.name, a.kind, a.relu, a.pure) == (name, kind, relu, pure)


@pytest.mark.parametrize(
    ("text", "code"),
    [("HBx()", "E201"), ("HBox(rleu=1)", "E202"), ("HBox(1)", "E208"), ("HBox(", "E103"), ("3", "E206"),
     ("HBox(relu=NIPS, relu=Boxy)", "E204")],
)
def test_parse_analysis_errors(text: str, code: str) -> None:
    with pytest.raises(AbsnetError) as info:
        parse_analysis(text)
    assert info.value.diagnostics[0].code == code
    assert "<domain>" in info.value.render()
