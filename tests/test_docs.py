"""docs/language.md stays true: every ```absnet block checks, and every catalog op is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from absnet import frontend
from absnet.diagnostics import AbsnetError
from absnet.grammar import ast
from absnet.ir.ops import CATALOG_LIST
from absnet.passes.pipeline import check_graph

DOC = Path(__file__).resolve().parents[1] / "docs" / "language.md"
_FENCE = re.compile(r"^```([A-Za-z0-9_-]*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def fenced_blocks(lang: str) -> list[tuple[int, str]]:
    """The (line number, text) of every fenced block of ``lang`` in the doc."""
    text = DOC.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(2)) for m in _FENCE.finditer(text) if m.group(1) == lang]


ABSNET_BLOCKS = fenced_blocks("absnet")


def test_the_doc_has_absnet_examples() -> None:
    assert len(ABSNET_BLOCKS) >= 10


@pytest.mark.parametrize(("line", "text"), ABSNET_BLOCKS, ids=[f"line{n}" for n, _ in ABSNET_BLOCKS])
def test_every_absnet_block_checks(line: int, text: str) -> None:
    # the doc's own path, so relative imports resolve from docs/ whatever the working directory
    try:
        module = frontend.check_source(text, file=str(DOC))
        for net in module.own(ast.NetworkDef):
            if all(p.default is not None for p in net.params):
                check_graph(frontend.lower_network(module, network=net.name))
    except AbsnetError as e:
        pytest.fail(f"the absnet block at docs/language.md:{line} does not check:\n{e}")


def test_every_catalog_op_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = [op.name for op in CATALOG_LIST if op.name != "Input" and f"`{op.name}`" not in text]
    assert not missing, f"docs/language.md does not mention: {', '.join(missing)}"


def test_every_catalog_attribute_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = [
        f"{op.name}.{a.name}"
        for op in CATALOG_LIST
        if op.name != "Input"
        for a in op.attrs
        if f"`{a.name}`" not in text
    ]
    assert not missing, f"docs/language.md does not mention the arguments: {', '.join(missing)}"


def test_state_dict_example_matches_the_compiler() -> None:
    """The key listing after ``network Keys`` is what the compiler produces."""
    import absnet

    source = next(t for _, t in ABSNET_BLOCKS if "network Keys" in t)
    listing = next(t for _, t in fenced_blocks("text") if t.startswith("layers.0.weight"))
    net = absnet.compile_source(source, network="Keys")
    got = [f"{k} {tuple(v.shape)}" for k, v in net.state_dict().items()]
    assert got == listing.strip().splitlines()
