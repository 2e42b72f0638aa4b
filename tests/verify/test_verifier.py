"""The verification cascade: verdicts re-checked one by one, counts, the order of steps, errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import absnet
from absnet.data.datasets import load_split
from absnet.diagnostics import AbsnetError, Diagnostic
from absnet.verify.verifier import VerifyReport, float64_copy, format_table, recheck, verify

SOURCE = "network Tiny { input [1, 8, 8] range [0, 1] Flatten() Linear(32) ReLU() Linear(10) }"
EPS = 0.04
CASCADE = ["Box()", "HBox()"]
N = 120


def train_tiny(steps: int = 100, seed: int = 0) -> Any:
    """A small MLP trained on the embedded digits for a few clean steps (deterministic on the CPU)."""
    net = absnet.compile_source(SOURCE, seed=seed)
    split = load_split("digits", "train")
    x, y = split.x.float() / split.scale, split.y
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def net() -> Any:
    return train_tiny()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    split = load_split("digits", "test")
    return split.x[:N].float() / split.scale, split.y[:N]


@pytest.fixture(scope="module")
def report(net: Any, data: tuple[torch.Tensor, torch.Tensor]) -> VerifyReport:
    x, y = data
    return verify(net, x, y, EPS, CASCADE, attack="PGD(k=10, r=2, restart=2)", batch=50, seed=0)


def test_the_fixture_gives_every_verdict_and_both_analyses_certify(report: VerifyReport) -> None:
    c = report.counts()
    assert c["certified"] and c["falsified"] and c["unknown"], c  # otherwise the checks below are vacuous
    assert c["misclassified"] and c["attack"], c
    assert {e.by for e in report.examples if e.verdict == "certified"} == set(CASCADE)


def test_every_certified_example_is_certified_by_the_named_analysis_alone(
    report: VerifyReport, net: Any, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = data
    for name in CASCADE:
        rows = [e.index for e in report.examples if e.by == name]
        assert rows
        with torch.no_grad():
            assert net.certify(x[rows], y[rows], EPS, domain=name).all()
    # and the first analysis did not certify what a later one did
    later = [e.index for e in report.examples if e.by == CASCADE[1]]
    with torch.no_grad():
        assert not net.certify(x[later], y[later], EPS, domain=CASCADE[0]).any()


def test_every_counterexample_is_in_the_ball_and_range_and_misclassified_in_float64(
    report: VerifyReport, net: Any, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, _y = data
    net64 = float64_copy(net)
    lo, hi = net.input_range
    falsified = [e for e in report.examples if e.verdict == "falsified"]
    points = torch.stack([e.counterexample for e in falsified])
    assert points.dtype == torch.float64
    centre = x[[e.index for e in falsified]].double()
    dist = (points - centre).abs().flatten(1).amax(dim=1)
    assert (dist <= EPS).all() and (points >= lo).all() and (points <= hi).all()
    with torch.no_grad():
        pred = net64(points).argmax(dim=1)
    labels = torch.tensor([e.label for e in falsified])
    assert (pred != labels).all()
    assert pred.tolist() == [e.predicted for e in falsified]
    assert dist.tolist() == pytest.approx([e.distance for e in falsified])
    for e in falsified:
        if e.by == "misclassified":
            assert e.distance == 0 and torch.equal(e.counterexample, x[e.index].double())
            assert e.margin is None  # no analysis ran on it


def test_counts_add_up_step_by_step(report: VerifyReport) -> None:
    c = report.counts()
    assert c["certified"] + c["falsified"] + c["unknown"] == c["total"] == N
    assert c["misclassified"] + c["attack"] == c["falsified"]
    clean, box, attack, hbox = report.stages
    assert [s.kind for s in report.stages] == ["clean", "analysis", "attack", "analysis"]
    assert clean.tried == N and clean.falsified == c["misclassified"]
    assert box.tried == N - clean.falsified
    assert attack.tried == box.tried - box.certified and attack.falsified == c["attack"]
    assert hbox.tried == attack.tried - attack.falsified
    assert box.certified + hbox.certified == c["certified"]
    assert c["unknown"] == hbox.tried - hbox.certified
    assert sum(e.time for e in report.examples) == pytest.approx(sum(s.time for s in report.stages))
    s = report.summary()
    assert s["certified_fraction"] + s["falsified_fraction"] + s["unknown_fraction"] == pytest.approx(1)
    assert s["examples_per_second"] > 0


def test_margins_are_the_best_lower_bound_and_positive_exactly_when_certified(report: VerifyReport) -> None:
    for e in report.examples:
        if e.verdict == "certified":
            assert e.margin > 0
        elif e.by != "misclassified":
            assert e.margin is not None and e.margin <= 0


def test_settled_examples_are_not_passed_to_later_steps(
    net: Any, data: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = data
    seen: dict[str, list[torch.Tensor]] = {}
    real = net.margin_lower

    def spy(xs: torch.Tensor, ys: torch.Tensor, eps: Any = 0.0, domain: Any = "Box()") -> torch.Tensor:
        seen.setdefault(str(domain), []).append(xs.clone())
        return real(xs, ys, eps, domain=domain)

    monkeypatch.setattr(net, "margin_lower", spy)
    r = verify(net, x, y, EPS, CASCADE, attack="PGD(k=10, r=2, restart=2)", batch=50, seed=0)
    monkeypatch.undo()

    def rows(name: str) -> set[tuple[float, ...]]:
        return {tuple(t.flatten().tolist()) for t in torch.cat(seen[name])}

    def of(examples: list[Any]) -> set[tuple[float, ...]]:
        return {tuple(x[e.index].flatten().tolist()) for e in examples}

    assert rows("Box()") == of([e for e in r.examples if e.by != "misclassified"])
    assert rows("HBox()") == of([e for e in r.examples if e.by in ("HBox()", None)])
    assert sum(t.shape[0] for t in seen["HBox()"]) == r.stages[-1].tried


def test_an_error_inside_an_analysis_propagates_and_gives_no_verdict(
    net: Any, data: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = data
    real = net.margin_lower

    def broken(xs: torch.Tensor, ys: torch.Tensor, eps: Any = 0.0, domain: Any = "Box()") -> torch.Tensor:
        if str(domain) == "HBox()":
            raise RuntimeError("boom")
        return real(xs, ys, eps, domain=domain)

    monkeypatch.setattr(net, "margin_lower", broken)
    with pytest.raises(RuntimeError, match="boom"):
        verify(net, x, y, EPS, CASCADE, attack=None)


def test_certified_sets_do_not_depend_on_the_batch_size(net: Any, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    a = verify(net, x, y, EPS, CASCADE, attack=None, batch=7)
    b = verify(net, x, y, EPS, CASCADE, attack=None)
    assert [(e.verdict, e.by) for e in a.examples] == [(e.verdict, e.by) for e in b.examples]
    assert [s.name for s in a.stages] == ["clean (float64)", "Box()", "HBox()"]


def test_unknown_analysis_is_E201_with_did_you_mean(net: Any, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    with pytest.raises(AbsnetError) as e:
        verify(net, x, y, EPS, ["Bx()"])
    (d,) = e.value.diagnostics
    assert d.code == "E201" and "Box" in (d.help or "")


@pytest.mark.parametrize(("attack", "message"), [("HBox()", "is not an attack"), ("PGD(w=0.3)", "its own width")])
def test_bad_attacks_are_E206(net: Any, data: tuple[torch.Tensor, torch.Tensor], attack: str, message: str) -> None:
    x, y = data
    with pytest.raises(AbsnetError, match=message) as e:
        verify(net, x, y, EPS, CASCADE, attack=attack)
    assert e.value.diagnostics[0].code == "E206"


def test_negative_epsilon_and_wrong_shapes_are_input_errors(net: Any, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    with pytest.raises(AbsnetError, match="epsilon"):
        verify(net, x, y, -0.1, CASCADE)
    with pytest.raises(AbsnetError) as e:
        verify(net, x.flatten(1), y, EPS, CASCADE)
    assert e.value.diagnostics[0].code == "E601"


def test_recheck_projects_into_the_ball_and_rejects_correct_points(net: Any) -> None:
    net64 = float64_copy(net)
    x = torch.full((1, 1, 8, 8), 0.3)  # 0.3 in float32: x + 0.1 rounds in float64
    far = torch.ones_like(x)  # outside the ball: projected onto it
    ok, pred, dist, p = recheck(net64, x, torch.tensor([0]), far, 0.1)
    assert float(dist) <= 0.1 and float((p - x.double()).abs().max()) <= 0.1
    with torch.no_grad():
        label = int(net64(p).argmax(dim=1))
    ok, pred, _, _ = recheck(net64, x, torch.tensor([label]), far, 0.1)
    assert not bool(ok) and int(pred) == label  # the network says the label there: no counterexample
    assert bool(recheck(net64, x, torch.tensor([(label + 1) % 10]), far, 0.1)[0])


def test_without_kept_points_the_report_still_has_class_and_distance(
    net: Any, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = data
    r = verify(net, x[:40], y[:40], EPS, CASCADE[:1], attack="FGSM()", keep_counterexamples=False, first_index=100)
    falsified = [e for e in r.examples if e.verdict == "falsified"]
    assert falsified and all(e.counterexample is None and e.predicted is not None for e in falsified)
    assert [e.index for e in r.examples] == list(range(100, 140))
    j = r.to_json()
    assert set(j) == {"settings", "summary", "stages", "examples"}
    assert j["settings"] == {"network": "Tiny", "epsilon": EPS, "analyses": ["Box()"], "attack": "FGSM()", "seed": 0}
    assert {"index", "label", "verdict", "by", "margin", "time", "predicted", "distance"} == set(
        next(e for e in j["examples"] if e["verdict"] == "falsified"))


def test_format_table_lists_every_step_and_the_verdicts(report: VerifyReport) -> None:
    text = format_table(report)
    for word in ("Box()", "HBox()", "PGD(k=10, r=2, restart=2)", "attack", "certified", "falsified", "unknown",
                 "total", "examples/s"):
        assert word in text
    c = report.counts()
    assert f"{100 * c['certified'] / N:.2f}%" in text


# TODO: add CROWN cascade test once landed (assert the CROWN analyses certify what they claim, as above)
def test_the_default_cascade_runs_box_then_the_attack_then_the_crown_family(
    net: Any, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    try:
        for a in ("CROWN_IBP()", "CROWN()", "AlphaCROWN()"):
            absnet.AbstractNetwork.analysis(a)
    except Exception as e:  # the CROWN analyses are being implemented elsewhere
        pytest.skip(f"CROWN analyses not available yet: {e}")
    x, y = data
    r = verify(net, x[:30], y[:30], EPS, attack="PGD(k=5)")
    assert [s.name for s in r.stages] == ["clean (float64)", "Box()", "PGD(k=5)", "CROWN_IBP()", "CROWN()",
                                          "AlphaCROWN()"]
    c = r.counts()
    assert c["certified"] + c["falsified"] + c["unknown"] == 30


def test_an_analysis_the_network_cannot_run_fails_before_any_work(
    net: Any, data: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = data
    calls: list[str] = []

    def plan(analysis: Any, training: bool) -> Any:
        if str(analysis) == "HBox()":
            raise AbsnetError(Diagnostic("E401", "Linear has no transformer for these values"))
        return None

    monkeypatch.setattr(net, "plan", plan)
    monkeypatch.setattr(net, "margin_lower", lambda *a, **k: calls.append("analysed"))
    with pytest.raises(AbsnetError, match="E401"):
        verify(net, x, y, EPS, CASCADE)
    assert calls == []
