"""End-to-end behaviour of AbstractNetwork: API, state_dict keys, soundness of whole networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import absnet
from absnet.diagnostics import AbsnetError
from absnet.ir.domains import ANALYSES

RESIDUAL = """
block Res(ch) {
  Add {
    branch { Conv2d(ch, kernel=3, padding=1) ReLU() Conv2d(ch, kernel=3, padding=1) }
    branch { }
  }
  ReLU()
}
network Small(classes=3) {
  input [2, 6, 6] range [0, 1]
  Normalize(mean=[0.5, 0.4], std=[0.25, 0.3])
  Conv2d(4, kernel=3, stride=1, padding=1) ReLU()
  Res(4)
  CorrMaxK(5, only_train=false)
  Concat(axis=1) { branch { Conv2d(2, kernel=1) } branch { AvgPool2d(2, stride=1) Conv2d(3, kernel=2, padding=1) } }
  MaxPool2d(2)
  Flatten()
  Linear(8) Tanh()
  CorrelateAll(only_train=false)
  Linear(classes)
}
"""


def _samples(x: torch.Tensor, eps: float, n: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """n points of the clipped ε-ball around each example, half of them vertices: (n, N, *s)."""
    lo, hi = (x - eps).clamp(low, high), (x + eps).clamp(low, high)
    u = torch.rand((n, *x.shape), dtype=x.dtype)
    u[: n // 2] = u[: n // 2].round()
    return lo + (hi - lo) * u


@pytest.mark.parametrize("domain", list(ANALYSES))
def test_residual_network_bounds_contain_sampled_points(domain: str) -> None:
    torch.manual_seed(0)
    net = absnet.compile_source(RESIDUAL, seed=1).double().eval()
    x = torch.rand(3, 2, 6, 6, dtype=torch.float64)
    eps = 0.0 if domain == "Point" else 0.05
    lo, hi = net.bounds(x, eps, domain=f"{domain}()")
    ys = torch.tensor([0, 1, 2])
    m = net.margin_lower(x, ys, eps, domain=f"{domain}()")
    with torch.no_grad():
        for pts in _samples(x, eps, 1000).split(100):
            out = net(pts.reshape(-1, 2, 6, 6)).reshape(pts.shape[0], 3, 3)
            assert (out >= lo - 1e-9).all() and (out <= hi + 1e-9).all()
            true_margin = out.gather(2, ys.view(1, 3, 1).expand(pts.shape[0], 3, 1)) - out
            assert (true_margin >= m - 1e-9).all()


def test_margin_is_tighter_than_interval_difference_with_generators() -> None:
    net = absnet.compile_source(RESIDUAL, seed=1).double().eval()
    x = torch.rand(4, 2, 6, 6, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    m = net.margin_lower(x, y, 0.02, domain="HBox()")
    lo, hi = net.bounds(x, 0.02, domain="HBox()")
    naive = lo[:, :1] - hi
    assert (m[:, 1:] >= naive[:, 1:] - 1e-12).all()
    assert (m[:, 0] == 0).all()


def test_state_dict_keys_follow_layer_positions() -> None:
    net = absnet.compile_source(RESIDUAL)
    keys = set(net.state_dict())
    assert "layers.1.weight" in keys  # Conv2d, statement 1 after Normalize
    assert "layers.3.0.0.0.weight" in keys  # Res block (3) → Add (0) → branch 0 → Conv2d 0
    assert "layers.8.weight" in keys and "layers.11.bias" in keys
    net2 = absnet.compile_source(RESIDUAL, seed=5)
    net2.load_state_dict(net.state_dict())
    x = torch.rand(2, 2, 6, 6)
    assert torch.equal(net(x), net2(x))


def test_seed_makes_initialisation_reproducible() -> None:
    a, b = absnet.compile_source(RESIDUAL, seed=3), absnet.compile_source(RESIDUAL, seed=3)
    c = absnet.compile_source(RESIDUAL, seed=4)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.state_dict()["layers.1.weight"], c.state_dict()["layers.1.weight"])


def test_only_train_directives_act_only_in_training_mode() -> None:
    src = """network N { input [6]  Linear(6) ReLU() CorrMaxK(3) Linear(2) }"""
    net = absnet.compile_source(src, seed=0).double()
    x = torch.rand(2, 6, dtype=torch.float64)
    net.eval()
    eval_b = net.output_value(x, 0.1, "Box()")
    net.train()
    train_b = net.output_value(x, 0.1, "Box()")
    assert type(eval_b).__name__ == "Box"
    assert type(train_b).__name__ == "Zonotope" and train_b.gens.shape[1] == 3


def test_input_region_is_clipped_to_declared_range() -> None:
    net = absnet.compile_source("network N { input [3] range [0, 1]  Identity() }").double()
    x = torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64)
    lo, hi = net.bounds(x, 0.2, domain="Box()")
    assert torch.allclose(lo, torch.tensor([[0.0, 0.3, 0.8]], dtype=torch.float64))
    assert torch.allclose(hi, torch.tensor([[0.2, 0.7, 1.0]], dtype=torch.float64))


def test_per_example_epsilon_and_box_inputs() -> None:
    net = absnet.compile_source("network N { input [3] range [-5, 5]  Linear(2) }").double()
    x = torch.zeros(2, 3, dtype=torch.float64)
    lo, hi = net.bounds(x, torch.tensor([0.0, 1.0], dtype=torch.float64), domain="HBox()")
    assert torch.allclose(lo[0], hi[0]) and (hi[1] > lo[1]).all()
    lo2, hi2 = net.bounds_box(x - 1, x + 1, domain="HBox()")
    assert torch.allclose(lo2[1], lo[1]) and torch.allclose(hi2[1], hi[1])


def test_wrong_input_shape_is_a_clear_error() -> None:
    net = absnet.compile_source("network N { input [1, 4, 4]  Flatten() Linear(2) }")
    with pytest.raises(AbsnetError, match=r"expects inputs of shape \[N, 1, 4, 4\].*got \[1, 4, 4\]"):
        net(torch.rand(1, 4, 4))


def test_from_torch_keeps_weights_and_outputs() -> None:
    torch.manual_seed(0)
    seq = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16, 8), nn.LeakyReLU(0.1), nn.Dropout(0.2), nn.Linear(8, 3),
    ).eval()
    seq[1].running_mean.uniform_(-0.2, 0.2)
    seq[1].running_var.uniform_(0.5, 2.0)
    net = absnet.from_torch(seq, input_shape=(1, 8, 8))
    x = torch.rand(5, 1, 8, 8)
    assert torch.allclose(net(x), seq(x), atol=1e-6)
    assert "Conv2d(4, kernel=3, stride=2, padding=1" in net.source
    lo, hi = net.bounds(x, 0.01, domain="ZNIPS()")
    assert (lo <= seq(x) + 1e-5).all() and (seq(x) <= hi + 1e-5).all()


def test_from_torch_reports_every_unsupported_module() -> None:
    seq = nn.Sequential(nn.Linear(2, 2), nn.GELU(), nn.Softmax(dim=1))
    with pytest.raises(AbsnetError) as e:
        absnet.from_torch(seq, input_shape=(2,))
    assert len(e.value.diagnostics) == 2 and "GELU" in str(e.value) and "Softmax" in str(e.value)


def test_float64_and_float32_agree() -> None:
    net = absnet.compile_source(RESIDUAL, seed=2).eval()
    x = torch.rand(2, 2, 6, 6)
    lo32, hi32 = net.bounds(x, 0.03, domain="HSwitch()")
    lo64, hi64 = net.double().bounds(x.double(), 0.03, domain="HSwitch()")
    assert torch.allclose(lo32.double(), lo64, atol=1e-4) and torch.allclose(hi32.double(), hi64, atol=1e-4)


def test_random_directives_are_reproducible_from_the_seed() -> None:
    src = "network N { input [8]  Linear(8) ReLU() CorrRand(3) DecorrRand(1) Linear(2) }"
    x = torch.rand(4, 8, generator=torch.Generator().manual_seed(0))

    def run(seed: int) -> torch.Tensor:
        net = absnet.compile_source(src, seed=0)
        net.rng.manual_seed(seed)
        return net.train().output_value(x, 0.1, domain="Box()").gens  # which elements were picked

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_memory_estimate_warns_before_a_huge_analysis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABSNET_MEMORY_WARN_GIB", "0.0001")
    net = absnet.compile_source("network N { input [64]  Linear(64) ReLU() Linear(2) }")
    with pytest.warns(ResourceWarning, match="ZNIPS"):
        net.bounds(torch.rand(8, 64), 0.1, domain="ZNIPS()")
