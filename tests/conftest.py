"""Shared pytest configuration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden", action="store_true", default=False,
        help="rewrite golden files (tests/golden/**) with the current output instead of comparing",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True when the run was started with ``--update-golden``."""
    return bool(request.config.getoption("--update-golden"))


def _on_one_thread() -> Iterator[None]:
    """torch on one intra-op thread for the fixture's scope. Tensors in tests are small, and on a busy
    2-core machine waking torch's worker threads costs milliseconds per op (runs 50x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


one_thread = pytest.fixture(_on_one_thread, name="one_thread")
one_thread_module = pytest.fixture(_on_one_thread, scope="module", name="one_thread_module")
