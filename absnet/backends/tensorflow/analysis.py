"""A compiled network's abstract analysis run natively in TensorFlow (eager or ``tf.function``).

The torch backend's analysis with :class:`~absnet.backends.tensorflow.ops.TfOps` in place of
TorchOps: the same eval-mode plan (``AbstractNetwork.plan``), input encoding
(``margins.input_bounds``/``box_bounds``/``abstract_input``), rules and output queries
(``margins.bounds``/``margin_lower``) — the ONNX exporter's ``propagate`` with TensorFlow values.
The parameters are read once from the network's state (``state_dict``) into ``tf.constant``s; a
later change of the torch weights is not seen (build a new analysis).

Every analysis the ONNX export supports runs here; AlphaCROWN (gradient steps on slopes) and
WongKolter(proj=k) (random projections) are torch-only and raise E505, as ONNX raises E502.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

from absnet.backends.onnx.export import propagate, stage_parameters, torch_only
from absnet.backends.tensorflow.ops import TfOps, require_tensorflow
from absnet.diagnostics import AbsnetError, Diagnostic
from absnet.ir.domains import Analysis
from absnet.transformers import margins as M


def _error(message: str, help: str | None = None) -> AbsnetError:
    return AbsnetError(Diagnostic("E505", message, help=help))


def check_supported(analysis: Analysis) -> None:
    """Raise E505 when ``analysis`` has no TensorFlow realisation (the torch-only analyses)."""
    why = torch_only(analysis)
    if why is not None:
        raise _error(why[0], help=f"analyse with {why[1]}")


def tf_parameters(net: Any, variables: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Per IR node, its parameters and buffers as float32 ``tf.constant``s read from ``net``'s state,
    or, for the ``state_dict`` keys in ``variables``, those TensorFlow values instead."""
    tf = require_tensorflow()
    variables = variables or {}

    def stage(key: str, t: Any) -> Any:
        return variables[key] if key in variables else tf.constant(t.detach().cpu().float().numpy())

    return stage_parameters(net, stage)


def to_tf(value: Any, dtype: Any = None) -> Any:
    """A torch tensor, numpy array, number or TensorFlow value as a TensorFlow tensor (float32 default)."""
    tf = require_tensorflow()
    dtype = dtype or tf.float32
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return tf.cast(tf.convert_to_tensor(value), dtype)


class TfAnalysis:
    """``net``'s analysis under ``domain`` in TensorFlow: ``lower, upper = TfAnalysis(net, "HBox()")(x, eps)``.

    Inputs may be torch tensors, numpy arrays or TensorFlow tensors; results are TensorFlow tensors
    (N, *output_shape). With ``jit`` (default) every query runs as a ``tf.function``, traced once per
    input shape (rules plan with static shapes; no autograph: their control flow depends on static
    facts only); without it, eagerly. ``seed`` seeds the
    ``tf.random.Generator`` of randomised directives (CorrRand, DecorrRand): their draws are
    TensorFlow's, not torch's, and sound either way.

    >>> import absnet, pytest
    >>> _ = pytest.importorskip("tensorflow")
    >>> net = absnet.compile_source("network N { input [2] range [-1, 1]  Linear(3) ReLU() Linear(2) }")
    >>> lower, upper = TfAnalysis(net, "HBox()")([[0.0, 0.5]], 0.1)
    >>> bool((lower.numpy() <= upper.numpy()).all()), tuple(lower.shape)
    (True, (1, 2))
    """

    def __init__(self, net: Any, domain: Analysis | str = "Box()", *, jit: bool = True, seed: int = 0):
        tf = require_tensorflow()
        self.net = net
        self.analysis = net.analysis(domain)
        check_supported(self.analysis)
        self.ops = TfOps(seed=seed)
        self.params = tf_parameters(net)
        self.classes = int(net.output_shape[0]) if len(net.output_shape) == 1 else None
        wrap = functools.partial(tf.function, autograph=False) if jit else (lambda f: f)
        self._ball = wrap(self._bounds_ball)
        self._box = wrap(self._bounds_box)
        self._margins = wrap(self._margin_lower)

    # ------------------------------------------------------------------ staged programs
    def _propagate(self, value: Any) -> Any:
        return propagate(self.net, value, self.analysis, self.ops, params=self.params)

    def _output(self, x: Any, eps: Any) -> Any:
        if self.analysis.kind == "point":
            return self._propagate(x)
        lo, hi = M.input_bounds(self.ops, x, eps, *self.net.input_range)
        return self._propagate(M.abstract_input(self.ops, lo, hi, self.analysis))

    def _bounds_ball(self, x: Any, eps: Any) -> tuple[Any, Any]:
        return M.bounds(self.ops, self._output(x, eps))

    def _bounds_box(self, lower: Any, upper: Any) -> tuple[Any, Any]:
        lo, hi = M.box_bounds(self.ops, lower, upper, *self.net.input_range)
        return M.bounds(self.ops, self._propagate(M.abstract_input(self.ops, lo, hi, self.analysis)))

    def _margin_lower(self, x: Any, eps: Any, label: Any) -> Any:
        tf = require_tensorflow()
        onehot = tf.one_hot(label, self.classes, dtype=x.dtype)
        return M.margin_lower(self.ops, self._output(x, eps), onehot)

    # ------------------------------------------------------------------ public queries
    def __call__(self, x: Any, eps: Any = 0.0) -> tuple[Any, Any]:
        """Sound (lower, upper) bounds over the L∞ ball of radius ``eps`` around ``x`` ∩ the input range.

        ``eps`` is a number or a tensor broadcastable to ``x``. ``Point()`` returns the network's
        output twice (``eps`` is ignored)."""
        x = self._input(x)
        return self._ball(x, self._eps(eps, x))

    def bounds_box(self, lower: Any, upper: Any) -> tuple[Any, Any]:
        """Sound output bounds over the input box [lower, upper] ∩ the input range (``net.bounds_box``)."""
        self._needs_set("a box input")
        return self._box(self._input(lower), self._input(upper))

    def margin_lower(self, x: Any, eps: Any, label: Any) -> Any:
        """Lower bounds of f_y − f_j (N, classes) over the ball, computed inside the domain; 0 at j = y."""
        tf = require_tensorflow()
        self._needs_set("margins")
        if self.classes is None:
            raise _error(f"margins need flat outputs (classes), but {self.net.name} outputs "
                         f"{list(self.net.output_shape)}", help="end the network with Flatten() and Linear(classes)")
        x = self._input(x)
        return self._margins(x, self._eps(eps, x), to_tf(label, tf.int64))

    def certify(self, x: Any, eps: Any, label: Any) -> Any:
        """True (N,) where every margin f_y − f_j (j ≠ y) is provably positive (``net.certify``)."""
        tf = require_tensorflow()
        m = self.margin_lower(x, eps, label)
        hit = tf.cast(tf.one_hot(to_tf(label, tf.int64), self.classes), tf.bool)
        return tf.reduce_min(tf.where(hit, tf.constant(math.inf, m.dtype), m), axis=1) > 0

    def _needs_set(self, what: str) -> None:
        if self.analysis.kind == "point":
            raise _error(f"Point() is the concrete network: it has no input set and no {what}",
                         help="analyse with Box(), HBox() or CROWN() for bounds over a set")

    def _input(self, x: Any) -> Any:
        x = to_tf(x)
        if tuple(x.shape[1:]) != tuple(self.net.input_shape):
            raise AbsnetError(Diagnostic(
                "E601", f"network {self.net.name} expects inputs of shape [N, "
                f"{', '.join(map(str, self.net.input_shape))}], but got {list(x.shape)}"))
        return x

    @staticmethod
    def _eps(eps: Any, x: Any) -> Any:
        tf = require_tensorflow()
        e = to_tf(eps)
        if e.shape.rank == 1 and x.shape.rank > 1 and e.shape[0] == x.shape[0]:
            e = tf.reshape(e, [-1, *([1] * (x.shape.rank - 1))])
        if bool(tf.reduce_any(e < 0)):
            raise AbsnetError(Diagnostic("E602", "epsilon must be non-negative"))
        return e


def analyse_tf(net: Any, domain: Analysis | str, x: Any, eps: Any = 0.0, *, jit: bool = False) -> tuple[Any, Any]:
    """One-shot ``TfAnalysis(net, domain, jit=jit)(x, eps)``: sound (lower, upper) as TensorFlow tensors
    (eager by default: tracing a ``tf.function`` for one call costs more than it saves)."""
    return TfAnalysis(net, domain, jit=jit)(x, eps)
