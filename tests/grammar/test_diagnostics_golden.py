"""Golden diagnostics (what ``absc check`` prints): each tests/golden/diagnostics/X.absnet renders exactly X.expected.

Run ``pytest --update-golden`` to rewrite the expected files, then review the diff. A first line
``# absc check --analysis A`` adds the analyses A (as ``absc check --analysis`` does).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from absnet.diagnostics import AbsnetError
from absnet.frontend import parse_analysis
from absnet.passes.pipeline import check_text

ROOT = Path(__file__).parents[2]
GOLDEN = ROOT / "tests" / "golden" / "diagnostics"
CASES = sorted(GOLDEN.glob("*.absnet"))


def render(path: Path) -> str:
    name = path.relative_to(ROOT).as_posix()  # machine independent file names in the output
    text = path.read_text(encoding="utf-8")
    first = text.splitlines()[0] if text else ""
    flag = "# absc check --analysis "
    analyses = [parse_analysis(t) for t in first[len(flag):].split()] if first.startswith(flag) else []
    diags, sources = check_text(text, name, analyses)
    if diags:
        return AbsnetError(diags, sources).render() + "\n"
    return "no errors\n"


def test_there_are_golden_cases() -> None:
    assert len(CASES) >= 7


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_diagnostics_match_golden(path: Path, update_golden: bool) -> None:
    got = render(path)
    expected = path.with_suffix(".expected")
    if update_golden:
        expected.write_text(got, encoding="utf-8")
    elif not expected.exists():
        pytest.fail(f"{expected.name} is missing: run pytest --update-golden and review it")
    assert got == expected.read_text(encoding="utf-8")
    assert "no errors" not in got
