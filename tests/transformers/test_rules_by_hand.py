"""Small hand-computed answers for a few rules."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _rule_harness import DT, FixedNoiseOps, analysis_for, c, make_ctx, run_rule

from absnet.backends.torch.ops import TorchOps
from absnet.domains.box import Box
from absnet.domains.zonotope import Zonotope

OPS = TorchOps()


def t(*rows: Any) -> torch.Tensor:
    return torch.tensor(rows, dtype=DT)


def ctx_for(op: str, shape: tuple[int, ...], params: dict[str, Any] | None = None, domain: str = "zonotope",
            training: bool = False, ops: TorchOps = OPS, **attrs: Any) -> Any:
    return make_ctx(c(op, shape, **attrs), ops, params or {}, analysis_for(domain), training)


def test_linear_box_is_two_matmuls_with_abs_weights() -> None:
    params = {"weight": t([1.0, -2.0], [3.0, 0.5]), "bias": t(0.5, -1.0)}
    ctx = ctx_for("Linear", (2,), params, "box", out_features=2)
    out = run_rule("Linear", "box", ctx, Box(t([1.0, 1.0]), t([0.1, 0.2])))
    torch.testing.assert_close(out.center, t([-0.5, 2.5]))
    torch.testing.assert_close(out.radius, t([0.5, 0.4]))


def _crossing(relu: str) -> Zonotope:
    # c = 0.5, one generator 1.0, box 0.5: l = -1, u = 2 (crossing); second element stable: c = 3
    return Zonotope(t([0.5, 3.0]), t([0.5, 0.5]), t([[1.0, 1.0]]), (("g", 1),), False, relu)


def test_relu_boxy_boxes_a_crossing_neuron_to_zero_u() -> None:
    out = run_rule("ReLU", "zonotope", ctx_for("ReLU", (2,)), _crossing("Boxy"))
    torch.testing.assert_close(out.center, t([1.0, 3.0]))
    torch.testing.assert_close(out.box, t([1.0, 0.5]))
    torch.testing.assert_close(out.gens, t([[0.0, 1.0]]))


def test_relu_nips_lambda_and_mu() -> None:
    out = run_rule("ReLU", "zonotope", ctx_for("ReLU", (2,)), _crossing("NIPS"))
    lam, mu = 2.0 / 3.0, 1.0 / 3.0  # λ = u/(u − l), μ = −λ·l/2
    torch.testing.assert_close(out.center, t([lam * 0.5 + mu, 3.0]))
    torch.testing.assert_close(out.box, t([lam * 0.5 + mu, 0.5]))
    torch.testing.assert_close(out.gens, t([[lam, 1.0]]))


def test_relu_switch_keeps_slope_one_when_the_positive_side_is_larger() -> None:
    out = run_rule("ReLU", "zonotope", ctx_for("ReLU", (2,)), _crossing("Switch"))
    torch.testing.assert_close(out.center, t([0.5 + 0.5, 3.0]))  # c − l/2
    torch.testing.assert_close(out.box, t([0.5 + 0.5, 0.5]))
    torch.testing.assert_close(out.gens, t([[1.0, 1.0]]))


def test_relu_nips_pure_zonotope_without_generators_creates_them() -> None:
    z = Zonotope(t([0.5, -2.0]), t([1.5, 1.0]), None, (), True, "NIPS")
    out = run_rule("ReLU", "zonotope", ctx_for("ReLU", (2,)), z)
    assert out.box is None and out.blocks == (("n7:box", 2),)
    torch.testing.assert_close(out.gens, t([[1.0, 0.0], [0.0, 0.0]]))  # interval [0, 2]
    torch.testing.assert_close(out.center, t([1.0, 0.0]))


def test_corrmaxk_correlates_the_largest_upper_bounds_without_touching_the_input() -> None:
    box = Box(t([0.0, 0.0, 0.0, 0.0]), t([1.0, 4.0, 2.0, 3.0]))
    before = box.radius.clone()
    out = run_rule("CorrMaxK", "box", ctx_for("CorrMaxK", (4,), domain="box", num_correlate=2), box)
    assert isinstance(out, Zonotope) and out.blocks == (("n7:corr", 2),) and not out.pure
    torch.testing.assert_close(out.box, t([1.0, 0.0, 2.0, 0.0]))
    torch.testing.assert_close(out.gens, t([[0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]]))
    torch.testing.assert_close(box.radius, before)


def test_corrmaxpool2d_picks_one_element_per_window_of_every_channel() -> None:
    radius = t([[[1.0, 5.0], [2.0, 3.0]], [[7.0, 1.0], [0.0, 2.0]]])
    box = Box(torch.zeros_like(radius), radius)
    ctx = ctx_for("CorrMaxPool2D", (2, 2, 2), domain="box", kernel_size=2, max_type="only_beta")
    out = run_rule("CorrMaxPool2D", "box", ctx, box)
    assert out.k == 2
    picked = out.gens.flatten(2).abs().argmax(2)
    assert picked.tolist() == [[1, 4]]  # flat C·H·W positions: channel 0 → 1, channel 1 → 4
    torch.testing.assert_close(out.box.flatten(1), t([1.0, 0.0, 2.0, 3.0, 0.0, 1.0, 0.0, 2.0]))


def test_corrfix_uses_evenly_spaced_positions() -> None:
    box = Box(torch.zeros(1, 7, dtype=DT), torch.arange(1.0, 8.0, dtype=DT)[None])
    out = run_rule("CorrFix", "box", ctx_for("CorrFix", (7,), domain="box", k=3), box)
    assert out.k == 3  # s = ⌈7/3⌉ = 3 → positions 0, 3, 6
    assert out.gens.abs().argmax(2).tolist() == [[0, 3, 6]]


def _three_gens() -> Zonotope:
    gens = t([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]])  # masses 1, 3, 4
    return Zonotope(t([0.0, 0.0]), t([0.5, 0.5]), gens, (("a", 3),), False, "Boxy")


def test_decorrmin_folds_the_smallest_generators_into_the_box() -> None:
    ctx = ctx_for("DecorrMin", (2,), num_decorrelate=1)
    out = run_rule("DecorrMin", "zonotope", ctx, _three_gens())
    assert out.blocks == (("n7:keep", 2),)
    torch.testing.assert_close(out.box, t([1.5, 0.5]))
    torch.testing.assert_close(out.gens, t([[2.0, 2.0], [0.0, 3.0]]))


@pytest.mark.parametrize(("nd", "kept"), [(1, 1), (3, 3), (10, 3)])
def test_decorrmin_num_to_keep_keeps_that_many_or_all(nd: int, kept: int) -> None:
    ctx = ctx_for("DecorrMin", (2,), num_decorrelate=nd, num_to_keep=True)
    out = run_rule("DecorrMin", "zonotope", ctx, _three_gens())
    assert out.k == kept


def test_deep_loss_matches_the_formula() -> None:
    aux: list[Any] = []
    ctx = make_ctx(c("DeepLoss", (2,), bw=0.25), OPS, {}, analysis_for("box"), True, aux_losses=aux)
    box = Box.from_bounds(OPS, t([0.0, 1.0]), t([2.0, 3.0]))
    assert run_rule("DeepLoss", "box", ctx, box) is box
    (bw, loss), = aux
    assert bw == 0.25
    torch.testing.assert_close(loss, t(1.5))  # D(l,u) = 2 + 1, D(−u,−l) = 2 + 1, over 2·2


def test_batchnorm_training_updates_running_stats_like_torch() -> None:
    x = torch.randn(5, 3, dtype=DT)
    bn = torch.nn.BatchNorm1d(3, momentum=0.2).double()
    params = {k: v.detach().clone() for k, v in bn.state_dict().items() if k != "num_batches_tracked"}
    seen: dict[str, torch.Tensor] = {}
    ctx = make_ctx(c("BatchNorm1d", (3,), momentum=0.2), OPS, params, analysis_for("point"), True,
                   set_buffer=seen.__setitem__)
    y = run_rule("BatchNorm1d", "point", ctx, x)
    torch.testing.assert_close(y, bn.train()(x))
    torch.testing.assert_close(seen["running_mean"], bn.running_mean)
    torch.testing.assert_close(seen["running_var"], bn.running_var)


def test_dropout_mask_keeps_draws_at_least_p_and_rescales() -> None:
    ops = FixedNoiseOps(t([0.2, 0.7]), torch.Generator().manual_seed(0))
    ctx = ctx_for("Dropout", (2,), training=True, ops=ops, p=0.5)
    torch.testing.assert_close(run_rule("Dropout", "point", ctx, t([3.0, 3.0])), t([0.0, 6.0]))
    eval_ctx = ctx_for("Dropout", (2,), p=0.5)
    assert run_rule("Dropout", "point", eval_ctx, t([3.0, 3.0])).tolist() == [[3.0, 3.0]]


def test_maxpool_keeps_a_dominating_element_exactly() -> None:
    center = t([[[5.0, 0.0], [0.0, -1.0]]])  # the 5 dominates its window whatever the noise
    gens = t([[[[0.5, 0.1], [0.2, 0.3]]]])
    z = Zonotope(center, None, gens, (("g", 1),), False, "Boxy")
    out = run_rule("MaxPool2d", "zonotope", ctx_for("MaxPool2d", (1, 2, 2), kernel_size=2), z)
    torch.testing.assert_close(out.center, t([[[5.0]]]))
    torch.testing.assert_close(out.gens, t([[[[0.5]]]]))
    torch.testing.assert_close(out.box, t([[[0.0]]]))
