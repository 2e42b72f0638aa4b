"""Passes after lowering: shapes, domains, decompose, cost; all errors at once."""

from __future__ import annotations

import pytest

from absnet.diagnostics import AbsnetError
from absnet.ir.domains import ANALYSES
from absnet.ir.graph import IRGraph
from absnet.passes.base import PassManager, verify_graph
from absnet.passes.decompose import Decompose
from absnet.passes.estimate_cost import EstimateCost, estimate, parameter_count
from absnet.passes.infer_domains import InferDomains
from absnet.passes.infer_shapes import InferShapes
from absnet.passes.pipeline import lower


def test_every_shape_error_is_reported_at_once_with_layer_and_shapes() -> None:
    src = "network N {\n  input [1, 8, 8]\n  Linear(4)\n  Conv2d(2, kernel=9)\n}\n"
    g = IRGraph.sequential([1, 8, 8], [("Conv2d", {"out_channels": 2, "kernel_size": 9}),
                                       ("Flatten", {}), ("Conv2d", {"out_channels": 2, "kernel_size": 1})])
    with pytest.raises(AbsnetError) as e:
        InferShapes().run(g)
    # the second Conv2d's input depends on the failed first one: only one error, no cascade
    assert len(e.value.diagnostics) == 1 and "E301" in str(e.value)
    with pytest.raises(AbsnetError) as e2:
        lower(src, file="bad.absnet")
    text = str(e2.value)
    assert "bad.absnet:3:3: error[E301]: Linear (layer 0): Linear expects an input of shape [features]" in text
    assert "help: insert Flatten() before Linear" in text


def test_infer_domains_types_directive_outputs() -> None:
    g = IRGraph.sequential([4], [("Linear", {"out_features": 4}), ("CorrMaxK", {"num_correlate": 2}),
                                 ("ReLU", {}), ("Concretize", {"only_train": False})])
    InferShapes().run(g)
    InferDomains(ANALYSES["Box"], training=True).run(g)
    assert [n.meta["domain"] for n in g.nodes()] == ["box", "box", "zonotope", "zonotope", "zonotope"]
    InferDomains(ANALYSES["Box"], training=False).run(g)
    assert [n.meta["domain"] for n in g.nodes()][2] == "box"  # only_train CorrMaxK is inactive


def test_decompose_removes_inactive_nodes_in_eval_mode() -> None:
    g = IRGraph.sequential([4], [("Linear", {"out_features": 4}), ("Dropout", {}), ("CorrMaxK", {"k": 2}),
                                 ("Identity", {}), ("ReLU", {})])
    pm = PassManager([InferShapes(), InferDomains(ANALYSES["HBox"]), Decompose(training=False)], verify=True)
    g = pm.run(g)
    assert [n.op for n in g.nodes()] == ["Input", "Linear", "ReLU"]
    verify_graph(g)


def test_cost_counts_generators_of_pure_zonotopes() -> None:
    g = IRGraph.sequential([3], [("Linear", {"out_features": 5}), ("ReLU", {}), ("Linear", {"out_features": 2}),
                                 ("CorrMaxK", {"k": 1, "only_train": False})])
    InferShapes().run(g)
    rep = estimate(g, ANALYSES["ZNIPS"])
    assert rep.max_generators == 3 + 5 + 1
    EstimateCost(ANALYSES["Box"]).run(g)
    assert [n.meta["generators"] for n in g.nodes()] == [0, 0, 0, 0, 1]
    assert parameter_count(g) == 3 * 5 + 5 + 5 * 2 + 2
