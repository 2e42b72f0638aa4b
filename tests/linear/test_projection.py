"""WongKolter(proj=k): random-projection estimates of the Wong–Kolter intermediate bounds.

The estimate splits each exact bound into a linear part E and an ℓ1 spread S (lb = E − S, ub = E + S;
absnet/backends/torch/projection.py). E is computed exactly, so it must equal the midpoint of the
exact WongKolter() bounds, and with S computed exactly from identity objectives the split must give
those bounds back. With many projections the Cauchy-median spread is close to the exact one. The
networks are float64 and small; the exact bounds are WongKolter()'s intervals of the same values.
"""

from __future__ import annotations

import math

import pytest
import torch

import absnet
from absnet.backends.torch.ops import TorchOps
from absnet.backends.torch.projection import images, projected_interval, substitute, terms
from absnet.diagnostics import AbsnetError
from absnet.domains.linear import LinearValue, ancestors, back_substitute

pytestmark = pytest.mark.usefixtures("one_thread_module")  # small tensors (tests/conftest.py)

DT = torch.float64
NETS = {
    "mlp": """network Mlp {
  input [6] range [-1, 1]
  Linear(30)  ReLU()  Linear(30)  ReLU()  Linear(30)  ReLU()  Linear(4)
}""",
    "mlp_residual": """network MlpResidual {
  input [5] range [0, 1]
  Normalize(mean=[0.5], std=[0.3])
  Linear(24)  ReLU()
  Add {
    branch { Linear(24)  ReLU()  Linear(24) }
    branch { }
  }
  ReLU()  Linear(3)
}""",
    "cnn": """network Cnn {
  input [1, 8, 8] range [0, 1]
  Conv2d(4, kernel=3, padding=1)  BatchNorm2d()  ReLU()
  Conv2d(4, kernel=3, stride=2, padding=1)  ReLU()
  AvgPool2d(2)
  Flatten()
  Linear(16)  ReLU()
  Linear(3)
}""",
}
EPS = {"mlp": 0.2, "mlp_residual": 0.1, "cnn": 0.05}



def _net(name: str, seed: int = 0) -> absnet.AbstractNetwork:
    net = absnet.compile_source(NETS[name], seed=seed).double().eval()
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for key, t in net.state_dict().items():
            if key.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif key.endswith("running_mean"):
                t.copy_(0.2 * torch.randn(t.shape, generator=g))
    return net


def _inputs(net: absnet.AbstractNetwork, n: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lo, hi = net.input_range
    x = lo + (hi - lo) * torch.rand((n, *net.input_shape), generator=g, dtype=DT)
    return x, torch.randint(0, net.output_shape[0], (n,), generator=g)


def _bounded(out: LinearValue) -> list[LinearValue]:
    """The values of the segment whose intervals back-substitution computed (the pre-activations)."""
    return [v for v in ancestors(out) if v.source is None and v.interval is not None]


def _exact_split(ops: TorchOps, v: LinearValue) -> tuple[torch.Tensor, torch.Tensor]:
    """E (one exact row of forward images) and S computed exactly from the objectives e_j."""
    found = terms(ops, v)
    assert found is not None and not found[1]
    center = images(ops, v, 1, [(t.value, 0, t.exact.unsqueeze(1)) for t in found[0]])[:, 0]
    n = math.prod(v.shape)
    taps, _ = substitute(ops, v, torch.eye(n, dtype=DT).reshape(1, n, *v.shape))
    spread = 0
    for t in found[0]:
        tap = taps[id(t.value)]
        spread = spread + (tap.abs() * t.weight.unsqueeze(1)).flatten(2).sum(2)
    return center, spread.reshape(-1, *v.shape)


@pytest.mark.parametrize("name", NETS)
def test_linear_part_and_exact_spread_give_the_wong_kolter_bounds(name):
    net = _net(name)
    x, _ = _inputs(net)
    ops = TorchOps()
    with torch.no_grad():
        out = net.output_value(x, EPS[name], "WongKolter()")
        for v in _bounded(out):
            lo, hi = v.interval
            center, spread = _exact_split(ops, v)
            torch.testing.assert_close(center, (lo + hi) / 2, rtol=0, atol=1e-10)
            torch.testing.assert_close(center - spread, lo, rtol=0, atol=1e-10)
            torch.testing.assert_close(center + spread, hi, rtol=0, atol=1e-10)


@pytest.mark.parametrize(("name", "norm"), [(n, math.inf) for n in NETS] + [("mlp", 2), ("cnn", 2)])
def test_many_projections_estimate_the_wong_kolter_bounds(name, norm):
    net = _net(name)
    x, _ = _inputs(net)
    ops = TorchOps(torch.Generator().manual_seed(5))
    eps = EPS[name] * (3 if norm == 2 else 1)
    with torch.no_grad():
        out = net.output_value(x, eps, "WongKolter()", norm=norm)
        for v in _bounded(out):
            lo, hi = v.interval
            plo, phi = projected_interval(ops, v, 2000)
            assert bool((plo <= phi).all())
            width, est = hi - lo, phi - plo
            rel = (est - width).abs() / width
            assert float(rel.mean()) < 0.05, v.node
            assert float(rel.max()) < 0.25, v.node
            assert abs(float(est.sum() / width.sum()) - 1) < 0.1, v.node
            if norm == math.inf:  # E is exact: the estimate is centred on the exact bounds
                torch.testing.assert_close((plo + phi) / 2, (lo + hi) / 2, rtol=0, atol=1e-10)


def test_estimate_is_differentiable_like_the_exact_bounds():
    """E's gradient w.r.t. the weights is the exact midpoint's (create_graph through the images);
    the spread's gradient reaches every layer before the value."""
    net = _net("cnn")
    x, _ = _inputs(net)
    out = net.output_value(x, EPS["cnn"], "WongKolter()")
    v = max((u for u in _bounded(out) if u.op == "Conv2d"), key=lambda u: u.seq)  # the second conv
    params = [p for name, p in net.named_parameters() if name.startswith(("layers.0.", "layers.1."))]
    lo, hi = v.interval
    plo, phi = projected_interval(TorchOps(torch.Generator().manual_seed(0)), v, 50)
    exact = torch.autograd.grad(((lo + hi) / 2).sum(), params, retain_graph=True)
    mine = torch.autograd.grad(((plo + phi) / 2).sum(), params, retain_graph=True)
    for a, b in zip(exact, mine, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    for g in torch.autograd.grad((phi - plo).sum(), params):
        assert bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0


def test_margin_lower_with_projections_trains_and_refuses_to_certify():
    net = _net("cnn")
    net.train()
    x, y = _inputs(net, n=4)
    lb = net.margin_lower(x, y, EPS["cnn"], "WongKolter(proj=20)")
    assert bool(torch.isfinite(lb).all())
    out = net.output_value(x, EPS["cnn"], "WongKolter(proj=20)")
    assert any(v.interval[0].requires_grad for v in _bounded(out) if math.prod(v.shape) > 20)
    loss = torch.nn.functional.cross_entropy(-lb, y)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
    first = next(p for name, p in net.named_parameters() if name.endswith("weight"))
    assert float(first.grad.abs().sum()) > 0
    net.eval()
    with pytest.raises(AbsnetError) as err:
        net.certify(x, y, EPS["cnn"], "WongKolter(proj=20)")
    assert err.value.diagnostics[0].code == "E403"


def test_projections_are_reproducible_under_the_network_seed():
    net = _net("mlp")
    x, y = _inputs(net)

    def run(seed: int) -> torch.Tensor:
        net.rng.manual_seed(seed)
        return net.margin_lower(x, y, 0.2, "WongKolter(proj=10)")

    a, b, c = run(3), run(3), run(4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    assert not torch.equal(a, net.margin_lower(x, y, 0.2, "WongKolter()"))


def test_values_no_larger_than_k_are_bounded_exactly():
    x, y = _inputs(_net("mlp"))
    exact = _net("mlp").margin_lower(x, y, 0.2, "WongKolter()")
    torch.testing.assert_close(_net("mlp").margin_lower(x, y, 0.2, "WongKolter(proj=30)"), exact,
                               rtol=0, atol=0)


def test_segments_with_other_activations_fall_back_to_the_exact_bounds():
    net = absnet.compile_source("""network S {
  input [4] range [-1, 1]
  Linear(12)  Sigmoid()  Linear(12)  ReLU()  Linear(2)
}""").double().eval()
    x, _ = _inputs(net)
    ops = TorchOps()
    with torch.no_grad():
        out = net.output_value(x, 0.3, "WongKolter()")
        v = max(_bounded(out), key=lambda u: u.seq)
        assert terms(ops, v) is None
        lo, hi = projected_interval(ops, v, 3)
        elo, ehi = back_substitute(ops, v)
    torch.testing.assert_close(lo, elo, rtol=0, atol=0)
    torch.testing.assert_close(hi, ehi, rtol=0, atol=0)
