"""ONNX training-step graphs: VJP rules against torch autograd, and 20 trained steps against torch.optim.

The VJP checks run one facade program twice: with TorchOps on tensors that require grad (torch
autograd is the oracle) and staged with TrainOps, differentiated by ``grad.gradients`` and run in
onnxruntime. The loss is Σ out·w for a fixed random w, so every output element's cotangent differs.
Inputs hold exact ties and zeros where an op has a kink (Relu, Abs, Max/Min, ReduceMax), so the
subgradient conventions are checked, not only the smooth parts.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

import absnet
from absnet.backends.onnx import grad as G
from absnet.backends.onnx.export import session
from absnet.backends.onnx.train_step import NEXT, OnnxTrainer, compile_train_target, export_train_step
from absnet.backends.torch.ops import TorchOps
from absnet.diagnostics import AbsnetError
from absnet.goals.base import GoalContext
from absnet.goals.catalog import parse_goal
from absnet.goals.loss import goal_loss

SRC = ("network N { input [1, 8, 8] range [0, 1]  Conv2d(4, kernel=3, stride=2) ReLU() Flatten() "
       "Linear(16) ReLU() Linear(10) }")
TOL = 1e-4  # relative to the largest entry of each torch tensor


# --------------------------------------------------------------------------- VJP rules, op by op


def _vjp_errors(fn: Callable, inputs: dict[str, np.ndarray]) -> float:
    """max over inputs of |grad_onnx − grad_torch| / max(1, max|grad_torch|) for loss Σ fn(...)·w."""
    ts = {k: torch.tensor(v, requires_grad=True) for k, v in inputs.items()}
    out = fn(TorchOps(), *ts.values())
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * w).sum().backward()
    ops = G.TrainOps()
    vals = [ops.input(k, v.shape[1:] if k.startswith("a") else v.shape, batched=k.startswith("a"))
            for k, v in inputs.items()]
    y = fn(ops, *vals)
    wv = ops.input("cotangent", tuple(w.shape[1:]) if y.batched else tuple(w.shape), batched=y.batched)
    loss = ops.sum(ops.mul(y, wv), list(range(len(y.shape))))
    grads = G.gradients(ops, loss, vals)
    names = [f"d_{k}" for k in inputs]
    for n, g in zip(names, grads):
        ops.g.nodes.append(helper.make_node("Identity", [ops.g.materialize(g)], [n]))
    info = lambda n, v: helper.make_tensor_value_info(  # noqa: E731
        n, onnx.TensorProto.FLOAT, ["N" if i == 0 and v.batched else int(d) for i, d in enumerate(v.shape)])
    graph = helper.make_graph(ops.g.nodes, "vjp", [info(v.name, v) for v in [*vals, wv]],
                              [info(n, v) for n, v in zip(names, vals)], initializer=ops.g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    feeds = {**{k: v.astype(np.float32) for k, v in inputs.items()}, "cotangent": w.numpy()}
    got = session(model).run(names, feeds)
    err = 0.0
    for g, t in zip(got, ts.values()):
        ref = t.grad.numpy()
        err = max(err, float(np.abs(g - ref).max() / max(1.0, np.abs(ref).max())))
    return err


def _r(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + len(shape)).standard_normal(shape).astype(np.float32)


def _kinks(*shape: int) -> np.ndarray:
    """Random values with exact zeros and exact repeats (ties) in them."""
    x = np.round(_r(*shape, seed=3) * 2) / 2
    return x.astype(np.float32)


#: name → (program, inputs); inputs named a* share the dynamic batch axis, the others are static
CASES: dict[str, tuple[Callable, dict[str, np.ndarray]]] = {
    "add_broadcast": (lambda o, a, b: o.add(a, b), {"a": _r(3, 4, 5), "b": _r(4, 1)}),
    "sub_broadcast": (lambda o, a, b: o.sub(a, b), {"a": _r(3, 4), "b": _r(1, 4)}),
    "mul_broadcast": (lambda o, a, b: o.mul(a, b), {"a": _r(3, 2, 4), "b": _r(4)}),
    "div": (lambda o, a, a2: o.div(a, o.add(o.abs(a2), 1.0)), {"a": _r(3, 4), "a2": _r(3, 4, seed=5)}),
    "neg_exp_log_sqrt": (lambda o, a: o.log(o.sqrt(o.add(o.exp(o.neg(a)), 1.0))), {"a": _r(3, 5)}),
    "abs_at_zero": (lambda o, a: o.abs(a), {"a": _kinks(4, 6)}),
    "relu_at_zero": (lambda o, a: o.relu(a), {"a": _kinks(4, 6)}),
    "maximum_ties": (lambda o, a, b: o.maximum(a, b), {"a": _kinks(4, 6), "b": _kinks(6)[::-1].copy()}),
    "minimum_ties": (lambda o, a, a2: o.minimum(a, a2), {"a": _kinks(4, 6), "a2": _kinks(4, 6)[::-1].copy()}),
    "maximum_scalar": (lambda o, a: o.maximum(a, 0.0), {"a": _kinks(4, 6)}),
    "where": (lambda o, a, b: o.where(o.greater(a, 0.0), a, b), {"a": _r(3, 4), "b": _r(4)}),
    "matmul_weight": (lambda o, a, b: o.matmul(a, o.transpose(b, (1, 0))), {"a": _r(3, 5), "b": _r(4, 5)}),
    "matmul_3d_weight": (lambda o, a, b: o.matmul(a, b), {"a": _r(3, 2, 5), "b": _r(5, 4)}),
    "matmul_both_batched": (lambda o, a, a2: o.matmul(a, a2), {"a": _r(3, 2, 5), "a2": _r(3, 5, 4)}),
    "conv_stride_pad": (lambda o, a, w, b: o.conv(a, w, b, (2, 2), (1, 1), (1, 1), 1),
                        {"a": _r(2, 3, 7, 7), "w": _r(4, 3, 3, 3), "b": _r(4)}),
    "conv_dilation": (lambda o, a, w: o.conv(a, w, None, (1, 2), (0, 1), (2, 1), 1),
                      {"a": _r(2, 2, 8, 8), "w": _r(3, 2, 2, 3)}),
    "conv_grouped": (lambda o, a, w: o.conv(a, w, None, (1, 1), (1, 1), (1, 1), 2),
                     {"a": _r(2, 4, 5, 5), "w": _r(6, 2, 3, 3)}),
    "slice_strided": (lambda o, a: o.slice(o.slice(a, 1, 1, 7, 2), 2, 0, 5, 3), {"a": _r(2, 8, 6)}),
    "sum_keepdims": (lambda o, a: o.sum(a, [1, 2], keepdims=True), {"a": _r(3, 4, 5)}),
    "sum_batch": (lambda o, a: o.sum(a, [0, 2]), {"a": _r(3, 4, 5)}),
    "max_ties": (lambda o, a: o.max(a, [1]), {"a": _kinks(5, 6)}),
    "reshape_transpose": (lambda o, a: o.transpose(o.reshape(a, (-1, 4, 3)), (0, 2, 1)), {"a": _r(2, 12)}),
    "concat_slice": (lambda o, a, a2: o.slice(o.concat([a, a2], 1), 1, 1, 6), {"a": _r(2, 3), "a2": _r(2, 4)}),
    "pad": (lambda o, a: o.pad(a, [(1, 2), (0, 1)]), {"a": _r(2, 3, 4)}),
    "gather_scatter": (lambda o, a, a2: o.scatter(a, o.topk(a2, 2, 1)[1], o.gather(a2, o.topk(a2, 2, 1)[1], 1), 1),
                       {"a": _r(3, 5), "a2": _r(3, 5, seed=7)}),
    "topk": (lambda o, a: o.topk(a, 3, 1)[0], {"a": _r(3, 6)}),
    "conv_transpose": (lambda o, a, w: o.conv_transpose(a, w, (2, 2), (1, 1), (1, 0), (1, 1), 1),
                       {"a": _r(2, 3, 4, 5), "w": _r(3, 2, 3, 3)}),
    "conv_transpose_grouped_dilated": (lambda o, a, w: o.conv_transpose(a, w, (1, 2), (0, 1), (0, 1), (2, 1), 2),
                                       {"a": _r(2, 4, 5, 5), "w": _r(4, 3, 2, 3)}),
    "matmul_vector": (lambda o, a, b: o.matmul(a, b), {"a": _r(3, 4, 5), "b": _r(5)}),
    "matmul_vector_matrix": (lambda o, a, b: o.matmul(b, a), {"a": _r(2, 5, 3), "b": _r(5)}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_vjp_rule_matches_torch_autograd(case: str) -> None:
    fn, inputs = CASES[case]
    assert _vjp_errors(fn, inputs) <= 1e-6


def test_vjp_check_fails_on_a_wrong_subgradient(monkeypatch: pytest.MonkeyPatch) -> None:
    # a Relu rule that lets the gradient through everywhere must be caught
    monkeypatch.setitem(G.VJP, "Relu", lambda ops, xs, ys, gs, attrs, need: [gs[0]])
    fn, inputs = CASES["relu_at_zero"]
    assert _vjp_errors(fn, inputs) > 0.1


def test_stop_gradient_of_detach() -> None:
    # d/da of a·detach(a) is detach(a) = a, not 2a
    err = _vjp_errors(lambda o, a: o.mul(a, o.detach(a)), {"a": _r(3, 4)})
    assert err <= 1e-6


# --------------------------------------------------------------------------- whole training steps


def _batches(n: int, batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(batch, 1, 8, 8, generator=g), torch.randint(0, 10, (batch,), generator=g)) for _ in range(n)]


def _torch_train(net: absnet.AbstractNetwork, goal: str, opt: str, lr: float, eps: float, steps: int) -> None:
    net.train()
    o = (torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9) if opt == "sgd"
         else torch.optim.Adam(net.parameters(), lr=lr))
    g = parse_goal(goal)
    for x, y in _batches(steps):
        ctx = GoalContext(net=net, time=0.0, epsilon=eps, rng=random.Random(0), generator=torch.Generator())
        loss, _ = goal_loss(g, ctx, x, y)
        o.zero_grad()
        loss.backward()
        o.step()


def assert_trained_alike(trainer: OnnxTrainer, ref: absnet.AbstractNetwork, start: absnet.AbstractNetwork) -> None:
    """The graph-trained parameters equal torch's within TOL, and training moved them (a no-op step
    would also "match" a no-op reference)."""
    got = trainer.parameters()
    moved = 0.0
    for name, p in ref.named_parameters():
        scale = float(p.detach().abs().max())
        assert float((got[name] - p.detach()).abs().max()) <= TOL * scale, name
        moved = max(moved, float((p.detach() - start.state_dict()[name]).abs().max()) / scale)
    assert moved > 1e-3


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("goal", ["Point()", "Box()", "HBox()", "ZNIPS()"])
def test_twenty_steps_in_onnxruntime_match_torch_optim(goal: str, opt: str, one_thread: None) -> None:
    lr, eps, steps = (0.05 if opt == "sgd" else 0.01), 0.05, 20
    net = absnet.compile_source(SRC)
    ref = absnet.compile_source(SRC)
    ref.load_state_dict(net.state_dict())
    model = export_train_step(net, goal=goal, optimizer=opt)
    trainer = OnnxTrainer(model, net, threads=1)
    losses = [trainer.step(x.numpy(), y.numpy(), lr=lr, epsilon=eps) for x, y in _batches(steps)]
    _torch_train(ref, goal, opt, lr, eps, steps)
    assert_trained_alike(trainer, ref, net)
    assert all(np.isfinite(losses))


# directives that act in training mode (only_train defaults to true for these), deterministic ones
DIRECTIVES_SRC = ("network D { input [1, 8, 8] range [0, 1]  Conv2d(4, kernel=3, stride=2) ReLU() CorrMaxK(6) "
                  "Flatten() Linear(16) ReLU() DecorrMin(8) Linear(12) ReLU() Concretize() Linear(10) }")


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("goal", ["Box()", "ZNIPS()"])
def test_twenty_steps_with_training_directives_match_torch_optim(goal: str, opt: str, one_thread: None) -> None:
    lr, eps, steps = (0.05 if opt == "sgd" else 0.01), 0.05, 20
    net = absnet.compile_source(DIRECTIVES_SRC)
    ref = absnet.compile_source(DIRECTIVES_SRC)
    ref.load_state_dict(net.state_dict())
    trainer = OnnxTrainer(export_train_step(net, goal=goal, optimizer=opt), net, threads=1)
    for x, y in _batches(steps):
        trainer.step(x.numpy(), y.numpy(), lr=lr, epsilon=eps)
    _torch_train(ref, goal, opt, lr, eps, steps)
    assert_trained_alike(trainer, ref, net)


@pytest.mark.parametrize("opt, kw", [
    ("sgd", {"momentum": 0.0}), ("sgd", {"momentum": 0.8, "nesterov": True, "weight_decay": 1e-2}),
    ("adam", {"betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 1e-2}),
])
def test_optimizer_options_match_torch(opt: str, kw: dict, one_thread: None) -> None:
    net = absnet.compile_source(SRC)
    ref = absnet.compile_source(SRC)
    ref.load_state_dict(net.state_dict())
    trainer = OnnxTrainer(export_train_step(net, goal="Box()", optimizer=opt, **kw), net, threads=1)
    batches = _batches(5)
    for x, y in batches:
        trainer.step(x.numpy(), y.numpy(), lr=0.02, epsilon=0.05)
    ref.train()
    o = (torch.optim.SGD if opt == "sgd" else torch.optim.Adam)(ref.parameters(), lr=0.02, **kw)
    for x, y in batches:
        ctx = GoalContext(net=ref, time=0.0, epsilon=0.05, rng=random.Random(0), generator=torch.Generator())
        loss, _ = goal_loss(parse_goal("Box()"), ctx, x, y)
        o.zero_grad()
        loss.backward()
        o.step()
    got = trainer.parameters()
    for name, p in ref.named_parameters():
        assert float((got[name] - p.detach()).abs().max()) <= TOL * float(p.detach().abs().max()), name


POOL_SRC = ("network P { input [2, 8, 8] range [0, 1]  Normalize(mean=[0.5, 0.4], std=[0.25, 0.3]) "
            "Conv2d(4, kernel=3, padding=1) BatchNorm2d() ReLU() MaxPool2d(2) AvgPool2d(2) Flatten() "
            "Linear(12) BatchNorm1d() ReLU() Linear(10) }")


@pytest.mark.parametrize("goal", ["Point()", "Box()", "HBox()"])
def test_gradients_match_torch_through_pooling_and_training_batchnorm(goal: str, one_thread: None) -> None:
    net = absnet.compile_source(POOL_SRC)
    trainer = OnnxTrainer(export_train_step(net, goal=goal, gradients_out=True), net)
    x, y = _batches(1)[0]
    x = torch.cat([x, x.flip(2)], 1)
    loss = trainer.step(x.numpy(), y.numpy(), lr=0.1, epsilon=0.05)
    net.train()
    net.update_buffers = False  # as the training loop does while it computes the goal's loss
    ctx = GoalContext(net=net, time=0.0, epsilon=0.05, rng=random.Random(0), generator=torch.Generator())
    ref, _ = goal_loss(parse_goal(goal), ctx, x, y)
    ref.backward()
    assert abs(loss - ref.item()) <= 1e-5 * abs(ref.item())
    # the conv bias before a training BatchNorm has a zero gradient (batch statistics cancel it),
    # so differences are measured against the largest gradient of the network
    scale = max(float(p.grad.abs().max()) for p in net.parameters())
    for name, p in net.named_parameters():
        assert np.abs(trainer.last[f"grad.{name}"] - p.grad.numpy()).max() <= 1e-5 * scale, name


def test_graph_contract_parameters_are_inputs_and_batch_is_dynamic() -> None:
    net = absnet.compile_source(SRC)
    model = export_train_step(net, goal="Box()", optimizer="adam")
    onnx.checker.check_model(model, full_check=True)
    params = [k for k, _ in net.named_parameters()]
    ins = [i.name for i in model.graph.input]
    assert ins[:4] == ["input", "label", "epsilon", "lr"]
    assert set(params) <= set(ins) and not set(params) & {t.name for t in model.graph.initializer}
    state = [n for n in ins[4:] if n not in params]
    assert sorted(state) == sorted(["step", *(f"{p}.{s}" for p in params for s in ("exp_avg", "exp_avg_sq"))])
    assert model.graph.output[0].name == "loss"
    assert sorted(o.name for o in model.graph.output[1:]) == sorted(NEXT + n for n in ins[4:])
    sess = session(model)
    for n in (1, 3):
        feeds = {"input": np.full((n, 1, 8, 8), 0.5, np.float32), "label": np.zeros(n, np.int64),
                 "epsilon": np.array(0.1, np.float32), "lr": np.array(0.01, np.float32),
                 "step": np.array(0.0, np.float32)}
        feeds.update({k: v.numpy() for k, v in net.state_dict().items()})
        feeds.update({k: np.zeros(net.state_dict()[k.rsplit(".", 1)[0]].shape, np.float32)
                      for k in state if k != "step"})
        out = dict(zip([o.name for o in model.graph.output], sess.run(None, feeds)))
        assert out["next.step"] == 1 and np.isfinite(out["loss"])


def test_step_runs_in_the_reference_evaluator_like_onnxruntime() -> None:
    from onnx.reference import ReferenceEvaluator

    net = absnet.compile_source(SRC)
    model = export_train_step(net, goal="ZNIPS()", optimizer="adam")
    trainer = OnnxTrainer(model, net)
    x, y = _batches(1, batch=3)[0]
    feeds = {"input": x.numpy(), "label": y.numpy(), "epsilon": np.array(0.05, np.float32),
             "lr": np.array(0.01, np.float32), **{k: v.copy() for k, v in trainer.state.items()}}
    ref = ReferenceEvaluator(model).run(None, feeds)
    trainer.step(x.numpy(), y.numpy(), lr=0.01, epsilon=0.05)
    for out, r in zip(model.graph.output, ref):
        got = trainer.last[out.name]
        assert np.abs(r - got).max() <= 1e-5 * max(1.0, float(np.abs(got).max())), out.name


@pytest.mark.parametrize("goal, time", [
    ("CROWN_IBP(beta=0.5, kappa=0.3)", 0.0),  # constant β, κ: both margins mixed, the clean point weighted
    ("CROWN_IBP(beta=Lin(1, 0, 4), kappa=Lin(1, 0, 4))", 1.0),  # scheduled: goal_betas and goal_weights inputs
    ("CROWN_IBP(beta=0)", 0.0),  # IBP with the specification folded into the last layer, no CROWN pass
    ("CROWN()", 0.0),
    ("LinMix(a=Point(), b=DeepPoly(), bw=0.4)", 0.0),
    ("PGD(k=3)", 0.0),  # unrolled: each step's input gradient by reverse mode inside the graph
    ("LinMix(a=MI_FGSM(k=3, r=2), b=Box(), bw=0.5)", 0.0),
    ("FGSM(should_end=false)", 0.0),
])
def test_linear_and_attack_goal_steps_match_torch(goal: str, time: float, one_thread: None) -> None:
    """Five SGD steps of the linear-bound goals through conv layers (ConvTranspose and vector-MatMul
    VJPs) and of the attacks (their sign steps unrolled in the graph)."""
    five_steps_against_torch(SRC, goal, time, 0.03)


def five_steps_against_torch(src: str, goal: str, time: float, eps: float) -> dict[str, float]:
    """Five SGD steps of ``goal`` at schedule time ``time`` in onnxruntime and in torch: equal losses at
    every step and equal trained parameters. Returns torch's last goal_loss stats."""
    from absnet.backends.onnx.train_step import goal_inputs

    net = absnet.compile_source(src)
    ref = absnet.compile_source(src)
    ref.load_state_dict(net.state_dict())
    g = parse_goal(goal)
    trainer = OnnxTrainer(export_train_step(net, goal=g, optimizer="sgd"), net, threads=1)
    o = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    ref.train()
    stats: dict[str, float] = {}
    for x, y in _batches(5):
        ctx = GoalContext(net=ref, time=time, epsilon=eps, rng=random.Random(0), generator=torch.Generator())
        got = trainer.step(x.numpy(), y.numpy(), lr=0.05, epsilon=eps, goal=goal_inputs(g, ctx))
        loss, stats = goal_loss(g, ctx, x, y)
        assert got == pytest.approx(loss.item(), rel=1e-4)
        o.zero_grad()
        loss.backward()
        o.step()
    assert_trained_alike(trainer, ref, net)
    return stats


DEEP_SRC = ("network DL { input [1, 8, 8] range [0, 1]  Conv2d(4, kernel=3, stride=2) ReLU() DeepLoss(bw=BW1) "
            "Flatten() Linear(16) ReLU() DeepLoss(bw=BW2) Linear(10) }")


@pytest.mark.parametrize("goal, bws, time", [
    ("HBox()", ("0.3", "0.1"), 0.0),  # constant weights: part of the graph
    ("LinMix(a=Point(), b=Box(), bw=Lin(0, 1, 2))", ("Lin(0, 0.5, 2)", "0.2"), 1.0),  # a scheduled bw: goal_deep
    ("LinMix(a=Point(), b=ZNIPS(), bw=0)", ("0.3", "0.2"), 0.0),  # the abstract member weighs 0: no blend
    ("CROWN_IBP(beta=0.5, kappa=0.5)", ("0.3", "Lin(0.1, 0.4, 3)"), 2.0),
])
def test_deep_loss_blends_like_torch(goal: str, bws: tuple[str, str], time: float, one_thread: None) -> None:
    """DeepLoss regularisers recorded by the abstract passes are blended position by position as goal_loss does."""
    stats = five_steps_against_torch(DEEP_SRC.replace("BW1", bws[0]).replace("BW2", bws[1]), goal, time, 0.05)
    assert stats["deep"] == (0 if "bw=0)" in goal else 2)  # the test covers both a blend and none


def test_unsupported_goal_is_an_e502() -> None:
    net = absnet.compile_source(SRC)
    for goal in ("PGD(k=2, restart=1)", "AlphaCROWN()", "Box(w=0.1)", "Coin(Point(), Box())", "CROWN_IBP(w=0.1)",
                 "InSamp(0.5)"):
        with pytest.raises(AbsnetError) as e:
            export_train_step(net, goal=goal)
        assert "E502" in str(e.value)


def test_compile_train_target_reports_stats(tmp_path) -> None:
    net = absnet.compile_source(SRC)
    stats = compile_train_target(net, tmp_path / "step.onnx", goal="ZNIPS()", optimizer="sgd")
    assert (tmp_path / "step.onnx").exists()
    assert stats["backward_nodes"] > 0 and stats["inputs"]["input"] == ["N", 1, 8, 8]
    assert stats["smoke_rel_diff"] <= 1e-5 and stats["smoke_grad_rel_diff"] <= 1e-5


def test_absc_compile_onnx_train_writes_a_step_that_matches_torch(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from absnet import cli

    out = tmp_path / "step.onnx"
    code = cli.main(["compile", str(Path(__file__).parents[3] / "models" / "diffai.absnet"), "--network", "FFNN",
                     "--arg", "width=16", "--arg", "depth=3", "--arg", "size=8", "--target", "onnx-train",
                     "--goal", "HBox()", "--optimizer", "adam", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and out.exists()
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    assert "goal HBox(), optimizer adam" in text and "next.layers" in text
    diff = float(text.rsplit("max relative difference of the gradients ", 1)[1].split()[0])
    assert diff <= 1e-4
