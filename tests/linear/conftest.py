"""Shared fixtures of the linear-analysis tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _linear_tests_on_one_thread(one_thread_module: None) -> None:
    """Every linear-analysis test module runs torch on one thread (tests/conftest.py)."""
