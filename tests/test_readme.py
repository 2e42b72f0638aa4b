"""The README's Python tour runs as written (run from the repository root, like a user would)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_readme_python_blocks_run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "the README lost its Python tour"
    monkeypatch.chdir(ROOT)
    namespace: dict[str, object] = {}
    for block in blocks:
        code = compile(block, "README.md", "exec")  # our own documentation, not user input
        exec(code, namespace)
    assert "network Imported" in capsys.readouterr().out
    assert os.getcwd() == str(ROOT)
