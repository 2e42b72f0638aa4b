"""Soundness by sampling, generic over the registry: for every (op, domain) rule, every ReLU variant,
pure and hybrid zonotopes, train and eval mode, concrete points sampled inside the input set
(vertices included) and pushed through the point rule must land inside the output bounds — both per
element and after a random linear projection (which checks the generators' correlations)."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from _rule_harness import (
    CASES,
    DT,
    EXACT_DIRECTIVES,
    RELU_VARIANTS,
    Case,
    FixedNoiseOps,
    analysis_for,
    assert_within,
    bounds_of,
    make_attrs,
    make_ctx,
    make_inputs,
    make_params,
    projected_bounds,
    run_rule,
)

from absnet.domains.box import Box
from absnet.domains.linear import LinearValue
from absnet.domains.zonotope import Zonotope
from absnet.ir.ops import CATALOG
from absnet.transformers.registry import RULES, load_rules

SAMPLES = 1000
N = 2
load_rules()


def _variants(case: Case) -> tuple[str, ...]:
    return RELU_VARIANTS if case.op in ("ReLU", "LeakyReLU") else ("Boxy",)


def _box_params() -> Iterator[Any]:
    for case in CASES:
        for relu in ("Boxy", "BoxySound") if case.op == "ReLU" else ("Boxy",):
            for training in (False, True):
                mode = "train" if training else "eval"
                yield pytest.param(case, relu, training, id=f"{case.id}-{relu}-{mode}")


def _zono_params() -> Iterator[Any]:
    for case in CASES:
        flavors = ["hybrid", "pure", "nogens"] + (["mixed"] if len(case.shapes) > 1 else [])
        for flavor in flavors:
            for relu in _variants(case):
                for training in (False, True):
                    mode = "train" if training else "eval"
                    yield pytest.param(case, flavor, relu, training, id=f"{case.id}-{flavor}-{relu}-{mode}")


def _center_stats(x: Any, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = x.center
    axes = (0,) if rank == 1 else (0, 2, 3)
    return c.mean(axes), c.var(axes, unbiased=False)


def _check(case: Case, domain: str, flavor: str, relu: str, training: bool) -> None:
    seed = zlib.crc32(f"{case.id}{domain}{flavor}{relu}{training}".encode())
    g = torch.Generator().manual_seed(seed)
    attrs = make_attrs(case.op, case.attrs)
    params = make_params(case.op, case.shapes[0], attrs, g)
    xs, sample = make_inputs(domain, case.shapes, flavor, relu, g)
    noise = torch.rand(N, *case.shapes[0], generator=g, dtype=DT)
    ops = FixedNoiseOps(noise, torch.Generator().manual_seed(3))
    aux: list[Any] = []
    buffers: dict[str, Any] = {}
    ctx = make_ctx(case, ops, params, analysis_for(domain, flavor in ("pure", "nogens"), relu), training,
                   aux_losses=aux, set_buffer=buffers.__setitem__)
    out = run_rule(case.op, domain, ctx, *xs)

    want = {"box": Box, "zonotope": Zonotope, "linear": LinearValue}[RULES[(case.op, domain)].out]
    assert isinstance(out, want), f"{case.op} on {domain} returned {type(out).__name__}"
    if isinstance(out, Zonotope):
        assert (out.gens is None) == (out.k == 0)
        if out.gens is not None:
            assert out.gens.shape[1] == out.k and out.gens.shape[2:] == out.center.shape[1:]
        if out.pure and CATALOG[case.op].category == "activation":
            assert out.box is None, "a pure zonotope keeps no box radii after a nonlinearity"

    point_params, point_training = params, training
    if case.op.startswith("BatchNorm") and training:
        # abstract training-mode BN uses the centre's batch statistics (as DiffAI); check the rule
        # against the concrete layer with exactly those statistics
        mean, var = _center_stats(xs[0], len(case.shapes[0]))
        point_params = dict(params, running_mean=mean, running_var=var)
        point_training = False
        assert set(buffers) == {"running_mean", "running_var"}
    pctx = make_ctx(case, ops, point_params, analysis_for("point"), point_training)
    points = sample(SAMPLES)
    flat = [p.reshape(SAMPLES * N, *p.shape[2:]) for p in points]
    y = run_rule(case.op, "point", pctx, *flat)
    y = y.reshape(SAMPLES, N, *y.shape[1:])

    lo, hi = bounds_of(ops, out)
    assert torch.isfinite(lo).all() and torch.isfinite(hi).all()
    assert_within(y, lo, hi, f"{case.id} on {domain}")
    proj = torch.randn(math.prod(y.shape[2:]), 3, generator=g, dtype=DT)
    plo, phi = projected_bounds(out, proj)
    assert_within(y.flatten(2) @ proj, plo, phi, f"{case.id} on {domain}, projected")

    if case.op in EXACT_DIRECTIVES:  # re-representations keep every element's bounds
        ilo, ihi = bounds_of(ops, xs[0])
        torch.testing.assert_close(lo, ilo)
        torch.testing.assert_close(hi, ihi)
    if case.op == "DeepLoss":
        assert len(aux) == 1 and aux[0][1].shape == (N,)


@pytest.mark.parametrize(("case", "relu", "training"), list(_box_params()))
def test_box_rule_is_sound_by_sampling(case: Case, relu: str, training: bool) -> None:
    _check(case, "box", "box", relu, training)


@pytest.mark.parametrize(("case", "flavor", "relu", "training"), list(_zono_params()))
def test_zonotope_rule_is_sound_by_sampling(case: Case, flavor: str, relu: str, training: bool) -> None:
    _check(case, "zonotope", flavor, relu, training)
