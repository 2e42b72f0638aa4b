"""AbstractNetwork: the IR interpreted eagerly in torch, for the concrete network and every analysis.

The module owns the parameters (``state_dict`` keys are the DSL layer positions, e.g.
``layers.3.weight`` or ``layers.5.1.0.weight``) and runs, per analysis and mode, a plan: the IR
after ``infer_domains`` and ``decompose``, each node bound to its registered rule.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from absnet.backends.torch.ops import TorchOps
from absnet.diagnostics import AbsnetError, Diagnostic
from absnet.domains import Box, Zonotope
from absnet.ir.domains import ANALYSES, Analysis
from absnet.ir.graph import IRGraph, Node
from absnet.ir.ops import ParamSpec
from absnet.passes.decompose import Decompose
from absnet.passes.estimate_cost import estimate
from absnet.passes.infer_domains import InferDomains
from absnet.transformers import margins as M
from absnet.transformers.registry import Rule, RuleContext, lookup


class LayerParams(nn.Module):
    """The parameters and buffers of one IR node."""

    def __init__(self, specs: dict[str, ParamSpec], generator: torch.Generator):
        super().__init__()
        for name, spec in specs.items():
            t = torch.empty(spec.shape)
            if spec.init == "fan_in":
                bound = 1.0 / math.sqrt(max(spec.fan_in, 1))
                t.uniform_(-bound, bound, generator=generator)
            elif spec.init == "ones":
                t.fill_(1.0)
            else:
                t.zero_()
            if spec.buffer:
                self.register_buffer(name, t)
            else:
                setattr(self, name, nn.Parameter(t))

    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = dict(self._parameters)  # type: ignore[arg-type]
        out.update(self._buffers)  # type: ignore[arg-type]
        return out


@dataclass
class _Step:
    node: Node
    rule: Rule
    inputs: tuple[str, ...]
    in_shapes: tuple
    out_shape: tuple
    free: tuple[str, ...] = ()  # values no later step reads: dropped after this step


class AbstractNetwork(nn.Module):
    """A compiled network: ``net(x)`` is the concrete forward; ``bounds``/``margin_lower`` analyse.

    >>> import absnet, torch
    >>> net = absnet.compile_source("network N { input [2] range [-1, 1]  Linear(3) ReLU() Linear(2) }")
    >>> lo, hi = net.bounds(torch.zeros(1, 2), eps=0.1, domain="HBox()")
    >>> bool((lo <= hi).all())
    True
    """

    def __init__(self, graph: IRGraph, *, source: str | None = None, seed: int = 0):
        super().__init__()
        self.graph = graph
        self.source = source
        self.name = graph.name
        self.input_shape: tuple[int, ...] = tuple(graph.input.attrs["shape"])
        self.input_range = (float(graph.input.attrs["low"]), float(graph.input.attrs["high"]))
        self.output_shape: tuple[int, ...] = tuple(graph.output.meta["shape"])
        self.time = 0.0  # fractional epochs, read by schedules in directives (DeepLoss bw)
        self.aux_losses: list[tuple[Any, torch.Tensor]] = []
        #: in training mode, whether propagate() updates BatchNorm running statistics; the training
        #: loop turns it off for all but one concrete forward per step (attacks and abstract passes
        #: must not move the statistics)
        self.update_buffers = True
        #: sums a tensor over the processes of a distributed run (synchronised BatchNorm), or None
        self.stat_reduce: Any = None
        self.rng = torch.Generator().manual_seed(seed)
        init = torch.Generator().manual_seed(seed)
        self.layers = nn.ModuleDict()
        self._param_modules: dict[str, LayerParams] = {}
        for node in graph.nodes():
            specs = node.spec.params(node.meta["in_shapes"][0], node.attrs) if node.inputs else {}
            if specs:
                mod = LayerParams(specs, init)
                self._place(node.path, mod)
                self._param_modules[node.id] = mod
        self._plans: dict[tuple[Analysis, bool], tuple[list[_Step], str]] = {}
        self._elements_per_example: dict[tuple[Analysis, bool], int] = {}

    def _place(self, path: Sequence[str], mod: nn.Module) -> None:
        parent: nn.ModuleDict = self.layers
        for part in path[:-1]:
            if part not in parent:
                parent[part] = nn.ModuleDict()
            parent = parent[part]  # type: ignore[assignment]
        parent[path[-1]] = mod

    # ------------------------------------------------------------------ planning
    def plan(self, analysis: Analysis, training: bool) -> tuple[list[_Step], str]:
        """The nodes to run, each with its rule, and the output node id, for an analysis in a mode."""
        key = (analysis, training)
        if key not in self._plans:
            g = self.graph.copy()
            InferDomains(analysis, training).run(g)
            Decompose(training).run(g)
            steps = []
            for node in g.nodes():
                if node.op == "Input":
                    continue
                rule = lookup(node.op, node.meta["domain_in"])
                assert rule is not None, node.describe()
                steps.append(_Step(node, rule, node.inputs, node.meta["in_shapes"], node.meta["shape"]))
            last: dict[str, int] = {}
            for i, st in enumerate(steps):
                for src in st.inputs:
                    last[src] = i
            for i, st in enumerate(steps):
                st.free = tuple(sorted({s for s in st.inputs if last[s] == i and s != g.output_id}))
            self._plans[key] = (steps, g.output_id)
        return self._plans[key]

    def propagate(self, value: Any, analysis: Analysis | str, *, ops: TorchOps | None = None) -> Any:
        """Push an input value (tensor, Box or Zonotope) through the network under ``analysis``."""
        a = self.analysis(analysis)
        steps, out_id = self.plan(a, self.training)
        ops = ops or TorchOps(self.rng)
        env: dict[str, Any] = {self.graph.input_id: value}
        self.aux_losses = []
        for st in steps:
            mod = self._param_modules.get(st.node.id)
            ctx = RuleContext(
                ops, st.node, mod.tensors() if mod is not None else {}, a, self.training,
                st.in_shapes, st.out_shape, self.time, self.aux_losses,
                _buffer_setter(mod) if mod is not None and self.update_buffers else None,
                reduce_stats=self.stat_reduce if self.training else None,
            )
            env[st.node.id] = st.rule.fn(ctx, *(env[i] for i in st.inputs))
            for src in st.free:
                del env[src]
        return env[out_id]

    @staticmethod
    def analysis(domain: Analysis | str) -> Analysis:
        if isinstance(domain, Analysis):
            return domain
        if domain in ANALYSES:
            return ANALYSES[domain]
        return _parse_analysis(domain)

    # ------------------------------------------------------------------ public API
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The concrete network."""
        self._check_input(x)
        return self.propagate(x, ANALYSES["Point"])

    def input_value(self, x: torch.Tensor, eps: Any, domain: Analysis | str, norm: float = math.inf) -> Any:
        """The analysis's encoding of the ε-ball around ``x`` intersected with the input range.

        ``norm`` is ∞ (an L∞ ball) or 2 (an L2 ball: linear analyses bound over the ball itself,
        the others over its bounding box; both intersected with the input range)."""
        self._check_input(x)
        ops = TorchOps(self.rng)
        e = _as_eps(eps, x)
        lo, hi = M.input_bounds(ops, x, e, *self.input_range)
        if norm == math.inf:
            return M.abstract_input(ops, lo, hi, self.analysis(domain))
        if norm != 2:
            raise AbsnetError(Diagnostic("E602", f"norm must be inf or 2, got {norm}",
                                         help="use norm=math.inf (L∞ ball) or norm=2 (L2 ball)"))
        radius = e.reshape(-1) if e.dim() and e.numel() == x.shape[0] else None
        if radius is None:
            if e.numel() != 1:
                raise AbsnetError(Diagnostic("E602", "an L2 ball needs one radius per example (or one number)"))
            radius = e.reshape(1).expand(x.shape[0])
        return M.abstract_input(ops, lo, hi, self.analysis(domain), ball=(x, radius))

    def output_value(self, x: torch.Tensor, eps: Any, domain: Analysis | str = "Box()",
                     norm: float = math.inf) -> Any:
        """The abstract output value (Box, Zonotope, LinearValue or tensor) for the ε-ball around ``x``."""
        a = self.analysis(domain)
        self._warn_if_large(a, x.shape[0], x.element_size())
        return self.propagate(self.input_value(x, eps, a, norm), a)

    def bytes_per_example(self, analysis: Analysis | str, dtype_bytes: int = 4) -> int:
        """Estimated bytes of abstract values per example under ``analysis`` in the current mode
        (an over-estimate: ``estimate_cost`` sums every node); cached per (analysis, mode)."""
        a = self.analysis(analysis)
        key = (a, self.training)
        if key not in self._elements_per_example:
            report = estimate(self.graph.copy(), a, self.training, dtype_bytes=1)
            self._elements_per_example[key] = report.total_bytes_per_example
        return self._elements_per_example[key] * dtype_bytes

    def _warn_if_large(self, a: Analysis, batch: int, dtype_bytes: int) -> None:
        """Warn (once per call) when the cost estimate of this analysis exceeds ABSNET_MEMORY_WARN_GIB."""
        need = self.bytes_per_example(a, dtype_bytes) * batch
        limit = float(os.environ.get("ABSNET_MEMORY_WARN_GIB", "8")) * 2**30
        if need > limit:
            warnings.warn(
                f"{self.name} under {a} needs about {need / 2**30:.1f} GiB of values for a batch of {batch} "
                f"(estimate); use a smaller batch, Box(), or directives that drop generators (Concretize, DecorrMin)",
                ResourceWarning, stacklevel=3,
            )

    def bounds(
        self, x: torch.Tensor, eps: Any = 0.0, domain: Analysis | str = "Box()", norm: float = math.inf
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sound lower and upper bounds (N, outputs) on the network over the ε-ball around ``x``.

        ``eps`` is a number, or a tensor broadcastable to ``x`` (per example or per element);
        ``norm`` is ∞ or 2 (see :meth:`input_value`).
        """
        return M.bounds(TorchOps(), self.output_value(x, eps, domain, norm))

    def bounds_box(
        self, lower: torch.Tensor, upper: torch.Tensor, domain: Analysis | str = "Box()"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sound output bounds over the input box [lower, upper] (intersected with the input range)."""
        self._check_input(lower)
        ops = TorchOps(self.rng)
        lower, upper = M.box_bounds(ops, lower, upper, *self.input_range)
        a = self.analysis(domain)
        return M.bounds(ops, self.propagate(M.abstract_input(ops, lower, upper, a), a))

    def margin_lower(
        self, x: torch.Tensor, y: torch.Tensor, eps: Any = 0.0, domain: Analysis | str = "Box()",
        norm: float = math.inf,
    ) -> torch.Tensor:
        """Lower bounds of f_y − f_j (N, classes), computed inside the domain; 0 at j = y."""
        out = self.output_value(x, eps, domain, norm)
        onehot = torch.nn.functional.one_hot(y.long(), self.output_shape[0]).to(x.dtype)
        return M.margin_lower(TorchOps(), out, onehot)

    def certify(
        self, x: torch.Tensor, y: torch.Tensor, eps: Any = 0.0, domain: Analysis | str = "Box()",
        norm: float = math.inf,
    ) -> torch.Tensor:
        """True where every margin f_y − f_j (j ≠ y) is provably positive over the ε-ball.

        Raises E403 for analyses whose bounds are estimates (``WongKolter(proj=k)``)."""
        a = self.analysis(domain)
        if not a.sound:
            raise AbsnetError(Diagnostic(
                "E403", f"{a} estimates bounds with random projections: not a certificate",
                help="certify with WongKolter() (exact) or CROWN(); proj= is for training"))
        m = self.margin_lower(x, y, eps, a, norm)
        onehot = torch.nn.functional.one_hot(y.long(), self.output_shape[0]).bool()
        return m.masked_fill(onehot, float("inf")).min(dim=1).values > 0

    def _check_input(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.input_shape:
            raise AbsnetError(Diagnostic(
                "E601",
                f"network {self.name} expects inputs of shape [N, {', '.join(map(str, self.input_shape))}], "
                f"but got {list(x.shape)}",
                help="add the batch axis with x.unsqueeze(0)" if tuple(x.shape) == self.input_shape else None,
            ))

    def extra_repr(self) -> str:
        return f"name={self.name}, input={list(self.input_shape)}, output={list(self.output_shape)}"


@functools.lru_cache(maxsize=256)
def _parse_analysis(text: str) -> Analysis:
    from absnet.frontend import parse_analysis

    return parse_analysis(text)


def _as_eps(eps: Any, x: torch.Tensor) -> torch.Tensor:
    e = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if e.dim() == 1 and e.shape[0] == x.shape[0] and x.dim() > 1:
        e = e.reshape(-1, *([1] * (x.dim() - 1)))
    if (e < 0).any():
        raise AbsnetError(Diagnostic("E602", "epsilon must be non-negative"))
    return e


def _buffer_setter(mod: LayerParams):
    def set_buffer(name: str, value: torch.Tensor) -> None:
        with torch.no_grad():
            getattr(mod, name).copy_(value.detach())

    return set_buffer


__all__ = ["AbstractNetwork", "Box", "Zonotope"]
