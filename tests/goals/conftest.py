"""Shared fixtures for the goal tests: tiny networks and a goal context."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import torch

import absnet
from absnet.goals.base import GoalContext

TINY = "network Tiny { input [3] range [0, 1]  Linear(6) ReLU() Linear(3) }"


@pytest.fixture(autouse=True)
def _goal_tests_on_one_thread(one_thread: None) -> None:
    """Every goal test runs torch on one thread (tests/conftest.py): attacks run many tiny ops."""


@pytest.fixture
def tiny_net() -> absnet.AbstractNetwork:
    """A 3 → 6 → 3 ReLU network on inputs in [0, 1], in eval mode, float64."""
    return absnet.compile_source(TINY).double().eval()


@pytest.fixture
def make_ctx() -> Callable[..., GoalContext]:
    """``make_ctx(net, eps=0.1, time=0.0, seed=0)``: a context with seeded randomness."""

    def make(net: absnet.AbstractNetwork, eps: float = 0.1, time: float = 0.0, seed: int = 0) -> GoalContext:
        return GoalContext(net=net, time=time, epsilon=eps, rng=random.Random(seed),
                           generator=torch.Generator().manual_seed(seed))

    return make
