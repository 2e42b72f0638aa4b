"""Every network of the model zoo, at small input sizes, is sound under every analysis.

For each network, 1000 points of the clipped ε-ball (half of them vertices) go through the concrete
network and must lie inside the bounds of every analysis whose estimated memory fits a small budget
(the others run under Box only), in eval mode and — for networks without BatchNorm, whose training
mode depends on the batch — in training mode, where the directives with only_train act. Analyses
that back-substitute at every layer (CROWN, DeepPoly, …: time quadratic in the neurons) run on
networks with at most LINEAR_LIMIT nonlinear inputs, and in training mode only CROWN; their rules
are checked one by one in tests/transformers/test_linear_rules.py and on whole networks in
tests/linear.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import absnet
from absnet import frontend
from absnet.ir.domains import ANALYSES, Analysis
from absnet.passes.estimate_cost import estimate

MODELS = Path(__file__).parents[2] / "models"
BUDGET = 64 * 2**20  # bytes of abstract values for one example
#: small instantiations; networks not listed run with size=8
ARGS = {
    "FFNN": {"width": 16, "depth": 3, "size": 8},
    "ConvSmall": {"size": 12}, "ConvMed": {"size": 12},
    "cnn_2layer": {"size": 12}, "cnn_3layer_fixed": {"size": 12}, "cnn_4layer": {"size": 12},
    "DenseNet100": {"size": 28},
}
#: nonlinear inputs above which only CROWN_IBP of the linear analyses runs (IBP_large: 14,848, ~1 min each)
LINEAR_LIMIT = 4000
NONLINEAR = ("ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softplus", "ELU", "MaxPool2d")
HEAVY = {"ResNet34", "ResNet18", "SkipNet18", "SkipNet18_Combo", "DenseNet100"}  # slow on 2 CPU cores
CASES = [
    (f, name)
    for f in sorted(MODELS.glob("*.absnet"))
    for name in frontend.list_networks(f.read_text(), file=str(f))
]


def _runs(an: Analysis, nonlinear: int, training: bool) -> bool:
    """Whether the zoo test runs analysis ``an`` on a network with ``nonlinear`` nonlinear inputs."""
    if an.kind == "point":
        return False
    if an.kind != "linear" or an.intermediate == "ibp":
        return True
    return nonlinear <= LINEAR_LIMIT and (not training or an.name == "CROWN")


def _points(x: torch.Tensor, eps: float, n: int) -> torch.Tensor:
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    u = torch.rand((n, *x.shape), dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    u[: n // 2] = u[: n // 2].round()
    return lo + (hi - lo) * u


@pytest.mark.parametrize(
    "path,name",
    [pytest.param(f, n, id=n, marks=[pytest.mark.slow] if n in HEAVY else []) for f, n in CASES],
)
def test_zoo_network_bounds_contain_sampled_points(path: Path, name: str) -> None:
    net = absnet.compile_file(path, name, args=ARGS.get(name, {"size": 8}), seed=0).double()
    has_bn = any(n.op.startswith("BatchNorm") for n in net.graph.nodes())
    nonlinear = sum(math.prod(n.meta["in_shapes"][0]) for n in net.graph.nodes() if n.op in NONLINEAR)
    x = torch.rand((2, *net.input_shape), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eps = 0.02
    pts = _points(x, eps, 1000)
    for training in (False,) if has_bn else (False, True):
        net.train(training)
        with torch.no_grad():
            outs = torch.cat([net(p.reshape(-1, *net.input_shape)) for p in pts.split(50)])
        outs = outs.reshape(1000, 2, -1)
        for an in ANALYSES.values():
            if not _runs(an, nonlinear, training):
                continue
            if an.name != "Box" and estimate(net.graph.copy(), an, training).peak_bytes_per_example * 2 > BUDGET:
                continue
            with torch.no_grad():
                lo, hi = net.bounds(x, eps, domain=an)
            bad = ((outs < lo - 1e-9) | (outs > hi + 1e-9)).sum().item()
            assert bad == 0, f"{name} {an} training={training}: {bad} sampled outputs outside the bounds"
