"""Every op of the catalog has a rule for every domain kind (point, box, zonotope, linear) or a
reason in GAPS / DOMAIN_GAPS, and a line in the sample table."""

from __future__ import annotations

import pytest
from _rule_harness import CASES, DOMAIN_GAPS, GAPS

from absnet.ir.domains import DOMAIN_KINDS
from absnet.ir.ops import CATALOG_LIST
from absnet.transformers.registry import RULES, load_rules

OPS = [op.name for op in CATALOG_LIST]


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_a_rule_per_domain_or_a_reason(op: str) -> None:
    load_rules()
    if op in GAPS:
        assert GAPS[op], "a gap must carry a reason"
        return
    missing = [d for d in DOMAIN_KINDS if (op, d) not in RULES and (op, d) not in DOMAIN_GAPS]
    assert not missing, f"{op} has no rule for {missing}"


@pytest.mark.parametrize("gap", sorted(DOMAIN_GAPS), ids=lambda g: f"{g[0]}-{g[1]}")
def test_every_listed_gap_is_real_and_carries_a_reason(gap: tuple[str, str]) -> None:
    load_rules()
    op, domain = gap
    assert op in OPS and domain in DOMAIN_KINDS, gap
    assert DOMAIN_GAPS[gap], "a gap must carry a reason"
    assert gap not in RULES, f"{gap} has a rule now: drop it from DOMAIN_GAPS"


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_a_sample_configuration(op: str) -> None:
    assert op in GAPS or any(c.op == op for c in CASES), f"add a line for {op} to CASES"


def test_registry_holds_only_catalog_ops_and_documented_rules() -> None:
    load_rules()
    for (op, domain), rule in RULES.items():
        assert op in OPS, op
        assert rule.doc, f"rule ({op}, {domain}) needs a docstring stating its relaxation"
        assert rule.out in DOMAIN_KINDS
        if domain == "point":
            assert rule.out == "point"
