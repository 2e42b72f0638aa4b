"""Goals for the linear-bound analyses (CROWN, CROWN_IBP, DeepPoly, FastLin, WongKolter, AlphaCROWN):
losses against direct computations, CROWN-IBP's β/κ mixing and schedules, combinators, test
outcomes against ``net.certify``, catalog errors, and a short ``absc train`` run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import absnet
from absnet.cli import main
from absnet.diagnostics import AbsnetError
from absnet.domains import linear as L
from absnet.goals.catalog import check_test_goal, parse_goal
from absnet.goals.linear import CrownIbpGoal, LinearGoal
from absnet.goals.loss import goal_loss, test_outcome

NET = "network N { input [4] range [0, 1]  Linear(8) ReLU() Linear(6) ReLU() Linear(3) }"
EPS = 0.05


@pytest.fixture
def net() -> absnet.AbstractNetwork:
    return absnet.compile_source(NET, seed=7).double().eval()


def data(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.rand(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def robust_ce(lb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE(−lb, y) per example, written out: log(1 + Σ_{j≠y} exp(−lb_j)) (lb_y = 0)."""
    mask = F.one_hot(y, lb.shape[1]).bool()
    return torch.log1p(torch.exp(-lb).masked_fill(mask, 0.0).sum(dim=1))


def ibp_margins(net: absnet.AbstractNetwork, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """IBP's margins with the specification folded into the last layer, by hand (crown_ibp.md §1.3)."""
    (w1, b1), (w2, b2), (w3, b3) = [(net.state_dict()[f"layers.{i}.weight"], net.state_dict()[f"layers.{i}.bias"])
                                    for i in (0, 2, 4)]
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    for w, b in ((w1, b1), (w2, b2)):
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        c, r = mid @ w.T + b, rad @ w.T.abs()
        lo, hi = (c - r).relu(), (c + r).relu()
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    out = []
    for i in range(x.shape[0]):
        rows = w3[y[i]] - w3  # (K, n): e_y − e_j through the last layer
        out.append(rows @ mid[i] + (b3[y[i]] - b3) - rows.abs() @ rad[i])
    return torch.stack(out)


def loss_of(text: str, net, make_ctx, x, y, eps: float = EPS, time: float = 0.0, detach: bool = True) -> torch.Tensor:
    loss, _ = goal_loss(parse_goal(text), make_ctx(net, eps=eps, time=time), x, y)
    return loss.detach() if detach else loss


# --------------------------------------------------------------------------- losses


@pytest.mark.parametrize("goal,domain", [
    ("CROWN()", "CROWN()"), ("CROWN(slope=\"zero_lb\")", "CROWN(slope=\"zero_lb\")"), ("DeepPoly()", "DeepPoly()"),
    ("FastLin()", "FastLin()"), ("WongKolter()", "WongKolter()"), ("AlphaCROWN(iters=3)", "AlphaCROWN(iters=3)"),
    ("CROWN_IBP()", "CROWN_IBP()"),
])
def test_linear_goal_loss_is_cross_entropy_of_negated_margins(net, make_ctx, goal, domain) -> None:
    x, y = data()
    lb = net.margin_lower(x, y, EPS, domain)
    want = robust_ce(lb.detach(), y).mean()
    assert float(loss_of(goal, net, make_ctx, x, y)) == pytest.approx(float(want), rel=1e-9)


def test_beta_zero_is_the_ibp_margin_loss_with_the_spec_folded_into_the_last_layer(net, make_ctx) -> None:
    x, y = data()
    lb = ibp_margins(net, x, y, EPS)
    box = net.margin_lower(x, y, EPS, "Box()")
    assert bool((lb >= box - 1e-12).all()) and bool((lb > box + 1e-9).any())  # elision is tighter
    want = robust_ce(lb, y).mean()
    assert float(loss_of("CROWN_IBP(beta=0)", net, make_ctx, x, y)) == pytest.approx(float(want), rel=1e-9)


def test_beta_mixes_the_crown_ibp_and_ibp_margins(net, make_ctx) -> None:
    x, y = data()
    crown = net.margin_lower(x, y, EPS, "CROWN_IBP()").detach()
    ibp = ibp_margins(net, x, y, EPS)
    want = robust_ce(0.3 * crown + 0.7 * ibp, y).mean()
    assert float(loss_of("CROWN_IBP(beta=0.3)", net, make_ctx, x, y)) == pytest.approx(float(want), rel=1e-9)


def test_kappa_mixes_the_clean_cross_entropy(net, make_ctx) -> None:
    x, y = data()
    ce = F.cross_entropy(net(x), y, reduction="none").detach()
    robust = robust_ce(net.margin_lower(x, y, EPS, "CROWN_IBP()").detach(), y)
    want = (0.25 * ce + 0.75 * robust).mean()
    assert float(loss_of("CROWN_IBP(kappa=0.25)", net, make_ctx, x, y)) == pytest.approx(float(want), rel=1e-9)
    # κ = 1: the clean loss alone, no region propagated
    goal = parse_goal("CROWN_IBP(kappa=1)")
    terms = goal.terms(make_ctx(net, eps=EPS), x, y)
    assert [t.analysis.kind for t in terms] == ["point"]


def test_beta_and_kappa_schedules_are_evaluated_at_the_context_time(net, make_ctx) -> None:
    x, y = data()
    scheduled = loss_of("CROWN_IBP(beta=Lin(1, 0, 10), kappa=Lin(0, 0.5, 10))", net, make_ctx, x, y, time=4.0)
    fixed = loss_of("CROWN_IBP(beta=0.6, kappa=0.2)", net, make_ctx, x, y)
    assert float(scheduled) == pytest.approx(float(fixed), rel=1e-9)


def test_a_small_beta_skips_the_crown_pass(net, make_ctx, monkeypatch) -> None:
    x, y = data()

    def boom(*args, **kwargs):
        raise AssertionError("the CROWN back-substitution ran")

    monkeypatch.setattr(L, "margin_lower", boom)
    loss = loss_of("CROWN_IBP(beta=Lin(1, 0, 2))", net, make_ctx, x, y, time=2.0)  # β = 0
    assert torch.isfinite(loss)
    with pytest.raises(AssertionError, match="back-substitution"):
        loss_of("CROWN_IBP(beta=0.5)", net, make_ctx, x, y)


def test_zero_width_trains_on_the_clean_cross_entropy(net, make_ctx) -> None:
    x, y = data()
    ce = F.cross_entropy(net(x), y).detach()
    for text in ("CROWN()", "CROWN_IBP(beta=0.5)"):
        assert float(loss_of(text, net, make_ctx, x, y, eps=0.0)) == pytest.approx(float(ce), rel=1e-9)


@pytest.mark.parametrize("text", ["CROWN()", "CROWN_IBP(beta=0.5, kappa=0.5)", "CROWN_IBP(beta=0)", "FastLin()",
                                  "WongKolter(proj=2)", "AlphaCROWN(iters=2)"])
def test_gradients_reach_every_weight(text, make_ctx) -> None:
    net = absnet.compile_source(NET, seed=7).double().train()
    x, y = data()
    loss = loss_of(text, net, make_ctx, x, y, detach=False)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------- combinators


def test_mix_of_point_and_crown_ibp_is_the_weighted_sum(net, make_ctx) -> None:
    x, y = data()
    ce = F.cross_entropy(net(x), y, reduction="none").detach()
    robust = robust_ce(net.margin_lower(x, y, EPS, "CROWN_IBP()").detach(), y)
    want = (0.25 * ce + 0.75 * robust).mean()
    got = loss_of("Mix(a=Point(), b=CROWN_IBP(), aw=1, bw=3)", net, make_ctx, x, y)
    assert float(got) == pytest.approx(float(want), rel=1e-9)
    # the same as κ = 0.25 inside the goal
    assert float(loss_of("LinMix(a=Point(), b=CROWN_IBP(), bw=0.75)", net, make_ctx, x, y)) == pytest.approx(
        float(want), rel=1e-9)


@pytest.mark.parametrize("text", [
    "DList((CROWN(), 1), (Box(), 1), (CROWN_IBP(beta=0.5, kappa=0.5), 2))",
    "Coin(a=CROWN_IBP(), b=DeepPoly(), ap=0.5, bp=0.5)",
    "DProb((FastLin(), 1), (CROWN_IBP(), 1))",
    "InSamp(0.5, a=CROWN_IBP(beta=0.5))",
    "AdvInclusion(sub=0.5, a=IFGSM(k=1), b=CROWN())",
    "AdvDom(a=IFGSM(k=1), b=CROWN_IBP(kappa=0.5))",
    "BiAdv(a=IFGSM(k=1), b=DList((CROWN(), 1), (Point(), 1)))",
    "NormalAdv(a=PGD(k=1))",
])
def test_linear_goals_work_inside_every_combinator(text, make_ctx) -> None:
    net = absnet.compile_source(NET, seed=7).double().train()
    x, y = data()
    loss, stats = goal_loss(parse_goal(text), make_ctx(net, eps=EPS), x, y)
    assert torch.isfinite(loss) and stats["terms"] >= 1
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_between_builds_the_box_spanned_by_two_images(net, make_ctx) -> None:
    x, y = data()
    x2 = (x + 0.03).clamp(0, 1)
    goal = parse_goal("CROWN()")
    (term,) = goal.between(make_ctx(net), x, x2, y)
    assert isinstance(term.value, L.LinearValue) and term.analysis.name == "CROWN"
    lo, hi = net.bounds_box(torch.minimum(x, x2), torch.maximum(x, x2), "CROWN()")
    got_lo, got_hi = L.bounds(absnet.backends.torch.ops.TorchOps(), net.propagate(term.value, term.analysis))
    assert torch.allclose(got_lo, lo) and torch.allclose(got_hi, hi)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("text,domain", [("CROWN()", "CROWN()"), ("DeepPoly()", "DeepPoly()"),
                                         ("CROWN_IBP()", "CROWN_IBP()"), ("FastLin()", "FastLin()")])
def test_test_outcome_agrees_with_net_certify(net, make_ctx, text, domain) -> None:
    x, y = data(40)
    pred = net(x).argmax(dim=1)
    for eps in (0.05, 0.2):
        out = test_outcome(parse_goal(text), make_ctx(net, eps=eps), x, y, pred)
        assert 0 < int(out.proved.sum()) < x.shape[0]  # a mix of certified and not
        assert torch.equal(out.safe, net.certify(x, y, eps, domain))
        assert torch.equal(out.proved, net.certify(x, pred, eps, domain))
        assert out.analysis == parse_goal(text).analysis.name
        assert bool((out.width > 0).all())


def test_crown_ibp_test_certifies_with_the_bound_it_names(net, make_ctx) -> None:
    x, _ = data(40)
    pred = net(x).argmax(dim=1)
    out = test_outcome(parse_goal("CROWN_IBP(beta=0)"), make_ctx(net, eps=0.05), x, pred, pred)
    lb = ibp_margins(net, x, pred, 0.05).masked_fill(F.one_hot(pred, 3).bool(), float("inf"))
    assert out.analysis == "IBP" and torch.equal(out.safe, lb.min(dim=1).values > 0)
    lo, hi = net.bounds(x, 0.05, "Box()")
    assert torch.allclose(out.width, ((hi - lo) / 2).sum(dim=1))  # IBP's output box: no CROWN pass
    box = net.certify(x, pred, 0.05, "Box()")
    assert bool((out.safe >= box).all()) and out.safe.sum() > box.sum()  # IBP with elision ⊋ Box here
    crown = net.certify(x, pred, 0.05, "CROWN_IBP()")
    mixed = test_outcome(parse_goal("CROWN_IBP(beta=Lin(1, 0, 4), kappa=0.5)"), make_ctx(net, eps=0.05, time=1.0),
                         x, pred, pred)
    assert mixed.analysis == "0.75*CROWN_IBP+0.25*IBP"
    assert bool((mixed.safe <= (crown | out.safe)).all()) and bool((mixed.safe >= (crown & out.safe)).all())


def test_projected_wong_kolter_is_not_a_test_goal() -> None:
    with pytest.raises(AbsnetError) as e:
        check_test_goal(parse_goal("WongKolter(proj=4)"))
    assert e.value.diagnostics[0].code == "E403"
    assert check_test_goal(parse_goal("WongKolter()"))


# --------------------------------------------------------------------------- catalog


def test_catalog_builds_linear_goals_with_their_analyses() -> None:
    g = parse_goal('CROWN_IBP(beta=Lin(1, 0, 60, 1), kappa=0.5, slope="zero_lb")')
    assert isinstance(g, CrownIbpGoal) and str(g.analysis) == 'CROWN_IBP(slope="zero_lb")'
    assert str(parse_goal(str(g))) == str(g)  # str() is valid DSL
    a = parse_goal("AlphaCROWN(iters=5, lr=0.1)")
    assert isinstance(a, LinearGoal) and (a.analysis.alpha_iters, a.analysis.alpha_lr) == (5, 0.1)
    assert parse_goal("WongKolter(proj=8)").analysis.proj == 8
    assert parse_goal("DeepPoly").analysis.name == "DeepPoly"


@pytest.mark.parametrize("text,code,hint", [
    ("CROWN_IBP(bta=0.5)", "E202", "did you mean 'beta'?"),
    ("CROWN_IBP(kapa=0.5)", "E202", "did you mean 'kappa'?"),
    ("AlphaCROWN(iter=3)", "E202", "did you mean 'iters'?"),
    ("CROWN(proj=3)", "E202", None),
    ("CROWN_IBP(final_beta=0)", "E202", "beta=Lin(1, 0, 60, 1)"),
    ('CROWN(slope="zero")', "E206", "did you mean 'zero_lb'?"),
    ("CROWN_IBP(beta=1.5)", "E206", None),
    ("CROWN_IBP(kappa=Lin(0, 2, 10))", "E206", None),
    ("CROWNIBP()", "E201", "did you mean 'CROWN_IBP'?"),
])
def test_catalog_errors(text, code, hint) -> None:
    with pytest.raises(AbsnetError) as e:
        parse_goal(text)
    d = e.value.diagnostics[0]
    assert d.code == code
    if hint is not None:
        assert hint in (d.help or "")


# --------------------------------------------------------------------------- absc train


SPEC = """
import "{models}"
train T {{
  network cnn_2layer(size=8, width=1, linear_size=32)
  data digits(batch=32, test_batch=100, train_size=128, test_size=50)
  epsilon Lin(0, 0.05, 2)
  goal CROWN_IBP(beta=Lin(1, 0, 2), kappa=Lin(0.5, 0, 2))
  test CROWN_IBP(), CROWN_IBP(beta=0)
  optimizer Adam(lr=0.002)
  epochs 2
  seed 1
}}
"""


def test_absc_train_runs_two_epochs_with_a_crown_ibp_goal(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    models = Path(__file__).resolve().parents[2] / "models" / "crown_ibp.absnet"
    spec = tmp_path / "spec.absnet"
    spec.write_text(SPEC.format(models=models.as_posix()))
    assert main(["train", str(spec), "--out", str(tmp_path / "runs"), "--no-progress", "--no-plots",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "CROWN_IBP" in out and "IBP" in out
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "train"] == [1, 2]
    test = [r for r in records if r["kind"] == "test"][-1]
    assert 0 <= test["test/CROWN_IBP()/safe"] <= test["test/CROWN_IBP()/clean"] <= 1
    assert all(torch.isfinite(torch.tensor(r["train/loss"])) for r in records if r["kind"] == "train")
