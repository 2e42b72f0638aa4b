"""The TensorFlow realisation of the facade (absnet/backends/tensorflow) equals the torch backend.

- op by op: every facade program of the ONNX VJP table (tests/backends/onnx/test_train_step.py
  CASES, with kinks and ties) and TensorFlow-specific layouts give torch's values and torch
  autograd's gradients under ``tf.GradientTape``;
- analyses: the ONNX export's model/domain selection (tests/backends/onnx/test_onnx_export.py,
  same tolerance helper ``close``), eager at batch sizes 1 and 3, a few inside ``tf.function``;
  margins, certificates and box inputs; the full matrix is slow;
- training: a few TfTrainer steps (SGD and Adam, Box and ZNIPS) match torch.optim within 1e-4.

TensorFlow is an optional extra: the module is skipped where it is not installed
(``make test-interop`` installs it and runs this file).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

tf = pytest.importorskip("tensorflow", reason="TensorFlow is an optional extra: pip install 'absnet[tensorflow]'")

import absnet  # noqa: E402
from absnet.backends.tensorflow import TfAnalysis, TfOps, TfTrainer, analyse_tf  # noqa: E402
from absnet.backends.tensorflow import ops as tf_ops  # noqa: E402
from absnet.backends.torch.ops import TorchOps  # noqa: E402
from absnet.diagnostics import AbsnetError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, rel: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


# the ONNX tests' model zoo, inputs, tolerance and model selection; their VJP programs and training helpers
EXPORT = _load("onnx_export_cases", "tests/backends/onnx/test_onnx_export.py")
STEP = _load("onnx_train_cases", "tests/backends/onnx/test_train_step.py")
EPS = EXPORT.EPS


@pytest.fixture(scope="module", autouse=True)
def _one_thread_tf(one_thread_module: None) -> None:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already started in this process (doctests ran first): keep its threads
        pass


# --------------------------------------------------------------------------- ops


def _r(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


#: layouts the VJP table lacks: depthwise and transposed convolutions (native, grouped, depthwise, dilated,
#: output padding, padding over the kernel edge), top-k and gather/scatter off the last axis, cropping pads
CASES = {
    **STEP.CASES,
    "conv_transpose_stride_pad": (lambda o, a, w: o.conv_transpose(a, w, (2, 2), (1, 1), (1, 1), (1, 1), 1),
                                  {"a": _r(2, 3, 4, 5), "w": _r(3, 2, 3, 3, seed=1)}),
    "conv_transpose_grouped_dilated": (lambda o, a, w: o.conv_transpose(a, w, (2, 1), (2, 1), (1, 0), (2, 1), 3),
                                       {"a": _r(2, 6, 4, 5), "w": _r(6, 2, 3, 2, seed=2)}),
    "conv_transpose_crop": (lambda o, a, w: o.conv_transpose(a, w, (1, 3), (2, 0), (0, 2), (1, 1), 2),
                            {"a": _r(2, 4, 5, 3), "w": _r(4, 1, 2, 4, seed=3)}),
    "conv_grouped_dilated_strided": (lambda o, a, w, b: o.conv(a, w, b, (2, 3), (2, 0), (2, 2), 3),
                                     {"a": _r(2, 6, 9, 11), "w": _r(6, 2, 3, 2, seed=4), "b": _r(6, seed=5)}),
    "conv_depthwise": (lambda o, a, w: o.conv(a, w, None, (2, 2), (1, 1), (1, 1), 3),
                       {"a": _r(2, 3, 6, 6), "w": _r(6, 1, 3, 3, seed=9)}),
    "conv_transpose_depthwise": (lambda o, a, w: o.conv_transpose(a, w, (2, 2), (0, 0), (0, 0), (1, 1), 4),
                                 {"a": _r(2, 4, 3, 3), "w": _r(4, 1, 2, 2, seed=10)}),
    "topk_middle_axis": (lambda o, a: o.topk(a, 2, 1)[0], {"a": _r(3, 5, 4)}),
    "gather_scatter_middle_axis": (
        lambda o, a, a2: o.scatter(a, o.topk(a2, 2, 1)[1], o.gather(a2, o.topk(a2, 2, 1)[1], 1), 1),
        {"a": _r(3, 5, 4, seed=6), "a2": _r(3, 5, 4, seed=7)}),
    "pad_crop": (lambda o, a: o.pad(a, [(0, 0), (-1, 2), (1, -2)], -3.0), {"a": _r(2, 4, 5)}),
    "matmul_vector": (lambda o, a, b: o.matmul(a, b), {"a": _r(3, 5), "b": _r(5, seed=8)}),
}


def _program_errors(fn: Any, inputs: dict[str, np.ndarray], ops: Any = None) -> tuple[float, float]:
    """(value error, gradient error) of ``fn`` in TensorFlow against torch, for the loss Σ fn(...)·w,
    each relative to max(1, max|torch|)."""
    ts = {k: torch.tensor(v, requires_grad=True) for k, v in inputs.items()}
    ref = fn(TorchOps(), *ts.values())
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    (ref * w).sum().backward()
    vs = [tf.Variable(v) for v in inputs.values()]
    with tf.GradientTape() as tape:
        out = fn(ops or TfOps(), *vs)
        loss = tf.reduce_sum(out * w.numpy())
    grads = tape.gradient(loss, vs)
    r = ref.detach().numpy()
    err = float(np.abs(out.numpy() - r).max() / max(1.0, np.abs(r).max()))
    gerr = 0.0
    for g, t in zip(grads, ts.values()):
        want = t.grad.numpy()
        got = np.zeros_like(want) if g is None else tf.convert_to_tensor(g).numpy()
        gerr = max(gerr, float(np.abs(got - want).max() / max(1.0, np.abs(want).max())))
    return err, gerr


@pytest.mark.parametrize("case", sorted(CASES))
def test_tf_op_values_and_gradients_match_torch(case: str) -> None:
    fn, inputs = CASES[case]
    err, gerr = _program_errors(fn, inputs)
    assert err <= 1e-5 and gerr <= 1e-5, (err, gerr)


def test_tie_gradients_follow_torch_not_tensorflow() -> None:
    """tf.maximum gives a tie's whole gradient to its first operand; TfOps halves it as torch does."""
    fn, inputs = STEP.CASES["maximum_ties"]

    class RawTf(TfOps):
        def maximum(self, a: Any, b: Any) -> Any:
            return tf.maximum(a, b)

    assert _program_errors(fn, inputs)[1] <= 1e-6
    assert _program_errors(fn, inputs, RawTf())[1] > 0.1


def test_rand_like_is_seeded_uniform() -> None:
    x = tf.zeros((4, 1000))
    a, b, c = TfOps(seed=3).rand_like(x), TfOps(seed=3).rand_like(x), TfOps(seed=4).rand_like(x)
    assert (a.numpy() == b.numpy()).all() and not (a.numpy() == c.numpy()).all()
    assert 0.0 <= float(tf.reduce_min(a)) and float(tf.reduce_max(a)) < 1.0
    assert abs(float(tf.reduce_mean(a)) - 0.5) < 0.02


def test_missing_tensorflow_is_an_e505_with_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tf_ops, "tf", None)
    with pytest.raises(AbsnetError) as e:
        TfOps()
    diag = e.value.diagnostics[0]
    assert diag.code == "E505" and "not installed" in diag.message and "pip install" in (diag.help or "")


def test_a_tf_function_without_a_static_batch_is_an_e505() -> None:
    ops = TfOps()
    f = tf.function(lambda x: ops.reshape(x, (ops.shape(x)[0], 3)), input_signature=[tf.TensorSpec([None, 3])],
                    autograph=False)
    with pytest.raises(AbsnetError) as e:
        f.get_concrete_function()
    assert e.value.diagnostics[0].code == "E505" and "static shapes" in e.value.diagnostics[0].message
    static = tf.function(lambda x: ops.reshape(x, (ops.shape(x)[0], 3)), input_signature=[tf.TensorSpec([2, 3])])
    assert static(tf.ones((2, 3))).shape == (2, 3)


# --------------------------------------------------------------------------- analyses


def check_tf_against_torch(name: str, domain: str, jit: bool = False) -> None:
    """One TfAnalysis, batch sizes 1 and 3: bounds equal the torch backend's (EXPORT.close)."""
    net = EXPORT.network(name)
    analysis = TfAnalysis(net, domain, jit=jit)
    for n in (1, 3):
        x = EXPORT.inputs(name, n)
        lo, hi = analysis(x, EPS)
        with torch.no_grad():
            if net.analysis(domain).kind == "point":
                EXPORT.close(lo.numpy(), net(x), f"{name} {domain} N={n}")
                continue
            want_lo, want_hi = net.bounds(x, EPS, domain=domain)
        assert tuple(lo.shape) == (n, *net.output_shape)
        EXPORT.close(lo.numpy(), want_lo, f"{name} {domain} N={n} lower")
        EXPORT.close(hi.numpy(), want_hi, f"{name} {domain} N={n} upper")


DEFAULT = EXPORT.DEFAULT


@pytest.mark.parametrize(("name", "domain"), DEFAULT, ids=[f"{n}-{d}" for n, d in DEFAULT])
def test_tf_bounds_equal_torch_at_two_batch_sizes(name: str, domain: str) -> None:
    check_tf_against_torch(name, domain)


# inside tf.function: every analysis kind and the op families of Mix and Dirs
JIT = [("FFNN", "Point()"), ("FFNN", "HBox()"), ("FFNN", "CROWN()"), ("FFNN", "CROWN_IBP()"), ("ConvSmall", "Box()"),
       ("cnn_4layer", "CROWN_IBP()"), ("Mix", "HBox()"), ("Mix", "ZNIPS()"), ("Dirs", "ZSwitch()"),
       ("Dirs", "DeepPoly()")]


@pytest.mark.parametrize(("name", "domain"), JIT, ids=[f"{n}-{d}" for n, d in JIT])
def test_tf_function_bounds_equal_torch(name: str, domain: str) -> None:
    check_tf_against_torch(name, domain, jit=True)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "domain"), EXPORT.FULL, ids=[f"{n}-{d}" for n, d in EXPORT.FULL])
def test_zoo_tf_bounds_equal_torch(name: str, domain: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ONNX zoo test itself (its selection and skips), checking TensorFlow instead of onnxruntime."""
    monkeypatch.setattr(EXPORT, "check_against_torch", check_tf_against_torch)
    EXPORT.test_zoo_onnx_bounds_equal_torch(name, domain)


@pytest.mark.parametrize("domain", ["Box()", "HSmooth()", "ZBox()", "CROWN()", "CROWN_IBP()", "DeepPoly()"])
def test_margins_and_certified_equal_torch(domain: str) -> None:
    net = EXPORT.network("FFNN")
    analysis = TfAnalysis(net, domain, jit=False)
    x = torch.cat([EXPORT.inputs("FFNN", 3), EXPORT.inputs("FFNN", 1)])
    with torch.no_grad():
        y = net(x).argmax(1)
    y[1] = (y[1] + 1) % 10  # a wrong label: never certified
    for eps in (0.0, 1e-3):
        with torch.no_grad():
            want, cert = net.margin_lower(x, y, eps, domain=domain), net.certify(x, y, eps, domain=domain).numpy()
        EXPORT.close(analysis.margin_lower(x, eps, y).numpy(), want, f"{domain} margins eps={eps}")
        got = analysis.certify(x, eps, y).numpy()
        assert (got == cert).all() and not got[1] and (eps > 0 or got[[0, 2, 3]].all())


@pytest.mark.parametrize(("name", "domain"), [("FFNN", "HBox()"), ("FFNN", "CROWN()"), ("Mix", "Box()"),
                                              ("Mix", "ZNIPS()")])
def test_box_input_equals_bounds_box(name: str, domain: str) -> None:
    net = EXPORT.network(name)
    x = EXPORT.inputs(name, 3)
    lower, upper = x - 0.03, x + torch.linspace(-0.05, 0.05, x.numel()).reshape(x.shape)  # some upper < lower
    lo, hi = TfAnalysis(net, domain, jit=False).bounds_box(lower, upper)
    with torch.no_grad():
        want_lo, want_hi = net.bounds_box(lower, upper, domain=domain)
    EXPORT.close(lo.numpy(), want_lo, f"{name} {domain} box lower")
    EXPORT.close(hi.numpy(), want_hi, f"{name} {domain} box upper")


@pytest.mark.parametrize("domain", ["Box()", "HBox()", "ZNIPS()"])
def test_randomised_directives_run_and_stay_sound(domain: str) -> None:
    """CorrRand/DecorrRand draw from TensorFlow's generator (not torch's stream): check soundness."""
    net = EXPORT.network("Rand")
    x = EXPORT.inputs("Rand", 3)
    lo, hi = (t.numpy() for t in analyse_tf(net, domain, x, 0.05))
    u = torch.rand((200, *x.shape), generator=torch.Generator().manual_seed(0))
    low, high = (x - 0.05).clamp(0, 1), (x + 0.05).clamp(0, 1)
    with torch.no_grad():
        ys = net((low + (high - low) * u.round()).reshape(-1, *net.input_shape)).reshape(200, 3, -1).numpy()
    assert (ys >= lo - 1e-5).all() and (ys <= hi + 1e-5).all()


def test_analysis_holds_the_weights_it_was_built_with() -> None:
    """Weights changed after construction are not seen: the comparison can fail."""
    net = absnet.compile_source(EXPORT.SOURCE, "Dirs", seed=1).eval()
    analysis = TfAnalysis(net, "HBox()", jit=False)
    with torch.no_grad():
        next(iter(net.parameters())).mul_(1.5)
    x = EXPORT.inputs("Dirs", 3)
    _, hi = analysis(x, EPS)
    with torch.no_grad():
        _, want = net.bounds(x, EPS, domain="HBox()")
    with pytest.raises(AssertionError):
        EXPORT.close(hi.numpy(), want, "stale weights")


@pytest.mark.parametrize(("domain", "call", "words"), [
    ("AlphaCROWN()", None, "gradient steps"), ("WongKolter(proj=4)", None, "random projections"),
    ("Point()", "margins", "no input set"), ("Point()", "box", "no input set"),
])
def test_unsupported_requests_raise_e505(domain: str, call: str | None, words: str) -> None:
    net = EXPORT.network("FFNN")
    x = EXPORT.inputs("FFNN", 1)
    with pytest.raises(AbsnetError) as e:
        a = TfAnalysis(net, domain)
        a.margin_lower(x, EPS, [0]) if call == "margins" else a.bounds_box(x, x)
    diag = e.value.diagnostics[0]
    assert diag.code == "E505" and words in diag.message and diag.help


# --------------------------------------------------------------------------- training


def _check_trained(trainer: TfTrainer, ref: absnet.AbstractNetwork, start: dict[str, torch.Tensor]) -> None:
    got = trainer.parameters()
    moved = 0.0
    for name, p in ref.named_parameters():
        scale = float(p.detach().abs().max())
        assert float((got[name] - p.detach()).abs().max()) <= STEP.TOL * scale, name
        moved = max(moved, float((p.detach() - start[name]).abs().max()) / scale)
    assert moved > 1e-3  # the weights did train (a no-op step would also "match" a no-op reference)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("goal", ["Box()", "ZNIPS()"])
def test_tf_training_steps_match_torch_optim(goal: str, opt: str) -> None:
    lr, eps, steps = (0.05 if opt == "sgd" else 0.01), 0.05, 5
    net = absnet.compile_source(STEP.SRC)
    ref = absnet.compile_source(STEP.SRC)
    ref.load_state_dict(net.state_dict())
    trainer = TfTrainer(net, goal=goal, optimizer=opt)
    losses = [trainer.step(x, y, lr=lr, epsilon=eps) for x, y in STEP._batches(steps)]
    STEP._torch_train(ref, goal, opt, lr, eps, steps)
    _check_trained(trainer, ref, net.state_dict())
    assert all(np.isfinite(losses))


@pytest.mark.parametrize("opt, kw", [
    ("sgd", {"momentum": 0.0}), ("sgd", {"momentum": 0.8, "nesterov": True, "weight_decay": 1e-2}),
    ("adam", {"betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 1e-2}),
    ("adamw", {"weight_decay": 5e-2}),  # decoupled decay
])
def test_optimizer_options_and_point_goal_match_torch(opt: str, kw: dict) -> None:
    net = absnet.compile_source(STEP.SRC)
    ref = absnet.compile_source(STEP.SRC)
    ref.load_state_dict(net.state_dict())
    trainer = TfTrainer(net, goal="Point()", optimizer=opt, jit=False, **kw)
    batches = STEP._batches(4)
    for x, y in batches:
        trainer.step(x, y, lr=0.05, epsilon=0.05)
    ref.train()
    o = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[opt](ref.parameters(), lr=0.05,
                                                                                          **kw)
    for x, y in batches:
        loss = torch.nn.functional.cross_entropy(ref(x), y)
        o.zero_grad()
        loss.backward()
        o.step()
    _check_trained(trainer, ref, net.state_dict())
    sd = trainer.state_dict()
    assert sorted(sd) == sorted(net.state_dict()) and float((sd["layers.0.weight"] - net.state_dict()[
        "layers.0.weight"]).abs().max()) > 0


def test_unsupported_goals_are_e505() -> None:
    net = absnet.compile_source(STEP.SRC)
    for goal in ("PGD(k=2)", "CROWN()", "Box(w=0.1)"):
        with pytest.raises(AbsnetError) as e:
            TfTrainer(net, goal=goal)
        assert e.value.diagnostics[0].code == "E505", goal
    with pytest.raises(AbsnetError):
        TfTrainer(net, optimizer="rmsprop")
