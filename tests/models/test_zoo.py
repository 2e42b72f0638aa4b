"""The model zoo (models/*.absnet) against the papers: parameter counts, shapes and directives.

Counts come from the lowered IR alone (``OpSpec.params`` on inferred shapes: no tensor is created),
so even ResNetLarge_LargeCombo (65.8M parameters) and ResNet34 are checked in the default run.
Sources of the expected numbers:
- ``readme``: DiffAI's README table, repeated in reference/diffai.md §5.2 ("Standard networks").
- ``diffai.md``: reference/diffai.md §5.2 "Residual and combo networks" (CIFAR-10 only), computed
  there from DiffAI's definitions (DiffAI prints none).
- ``computed``: computed by us from the definitions (MNIST residual counts, DenseNet100, CROWN-IBP);
  independently re-derived by the torch.nn mirrors at the bottom of this file. For CROWN-IBP,
  reference/crown_ibp.md §1.12 gives rounded derived values ("52k", "1.10M"); each exact count is
  checked to round to that value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from absnet.frontend import list_networks, lower_network
from absnet.ir.graph import IRGraph
from absnet.passes.estimate_cost import parameter_count
from absnet.passes.infer_shapes import InferShapes

MODELS = Path(__file__).resolve().parents[2] / "models"

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2023, 0.1994, 0.2010]
MNIST: dict[str, Any] = {}
CIFAR: dict[str, Any] = {"in_ch": 3, "size": 32, "mean": CIFAR_MEAN, "std": CIFAR_STD}
DATASETS = {"mnist": MNIST, "cifar": CIFAR}

D, R = "diffai.absnet", "diffai_resnets.absnet"
C = "crown_ibp.absnet"

# (file, network, family args, {dataset: (count, source)})
DIFFAI: list[tuple[str, str, dict[str, Any], dict[str, tuple[int, str]]]] = [
    (D, "FFNN", {}, {"mnist": (119_910, "readme"), "cifar": (348_710, "readme")}),  # CIFAR input 3072
    (D, "ConvSmall", {}, {"mnist": (89_606, "readme"), "cifar": (125_318, "readme")}),
    (D, "ConvMed", {}, {"mnist": (166_406, "readme"), "cifar": (214_918, "readme")}),
    (D, "ConvBig", {}, {"mnist": (1_974_762, "readme"), "cifar": (2_466_858, "readme")}),
    (D, "ConvLargeIBP", {}, {"mnist": (5_426_402, "readme"), "cifar": (6_963_554, "readme")}),
    (D, "TruncatedVGG", {}, {"mnist": (13_109_706, "readme"), "cifar": (17_043_018, "readme")}),
    (R, "ResNetWong", {}, {"mnist": (3_254_162, "computed"), "cifar": (4_214_450, "diffai.md")}),
    (R, "ResNetTiny", {}, {"mnist": (12_627_670, "computed"), "cifar": (16_467_958, "diffai.md")}),
    (R, "ResNetTiny_FewCombo", {}, {"mnist": (12_627_670, "computed"), "cifar": (16_467_958, "diffai.md")}),
    (R, "ResNetTiny_ManyFixed", {}, {"mnist": (12_627_670, "computed"), "cifar": (16_467_958, "diffai.md")}),
    (R, "ResNetLarge_LargeCombo", {}, {"mnist": (50_459_186, "computed"), "cifar": (65_819_474, "diffai.md")}),
    (R, "ResNet18", {}, {"mnist": (15_625_482, "computed"), "cifar": (15_626_634, "diffai.md")}),
    (R, "SkipNet18", {}, {"mnist": (15_625_482, "computed"), "cifar": (15_626_634, "diffai.md")}),
    (R, "SkipNet18_Combo", {}, {"mnist": (15_625_482, "computed"), "cifar": (15_626_634, "diffai.md")}),
    (R, "ResNet34", {}, {"mnist": (25_729_930, "computed"), "cifar": (25_731_082, "diffai.md")}),
    (R, "DenseNet100", {}, {"mnist": (747_904, "computed"), "cifar": (748_336, "computed")}),
]

# (network, family args, dataset, exact count computed by us, crown_ibp.md §1.12's rounded value or None)
CROWN: list[tuple[str, dict[str, Any], str, int, str | None]] = [
    # mnist_crown (10 small models)
    ("cnn_2layer", {"width": 1, "linear_size": 128}, "mnist", 52_182, "52k"),
    ("cnn_2layer", {"width": 2, "linear_size": 256}, "mnist", 205_730, "206k"),
    ("cnn_4layer", {"width": 1, "linear_size": 256}, "mnist", 170_598, "171k"),
    ("cnn_4layer", {"width": 2, "linear_size": 256}, "mnist", 275_714, "276k"),
    ("cnn_4layer", {"width": 1, "linear_size": 512}, "mnist", 470_630, "471k"),
    ("cnn_4layer", {"width": 2, "linear_size": 512}, "mnist", 676_098, "676k"),
    ("cnn_3layer_fixed", {"kernel": 3, "width": 1, "linear_size": 64}, "mnist", 27_170, "27k"),
    ("cnn_3layer_fixed", {"kernel": 3, "width": 2, "linear_size": 128}, "mnist", 107_130, "107k"),
    ("cnn_3layer_fixed", {"kernel": 5, "width": 1, "linear_size": 64}, "mnist", 21_090, "21k"),
    ("cnn_3layer_fixed", {"kernel": 5, "width": 2, "linear_size": 128}, "mnist", 82_682, "83k"),
    # mnist_crown_large (8)
    ("cnn_4layer", {"width": 4, "linear_size": 512}, "mnist", 1_096_442, "1.10M"),
    ("cnn_4layer", {"width": 8, "linear_size": 512}, "mnist", 1_974_762, "1.97M"),
    ("cnn_4layer", {"width": 16, "linear_size": 512}, "mnist", 3_881_930, "3.88M"),
    ("cnn_3layer_fixed", {"kernel": 5, "width": 16, "linear_size": 512}, "mnist", 2_833_802, "2.83M"),
    ("cnn_3layer_fixed", {"kernel": 5, "width": 8, "linear_size": 512}, "mnist", 1_302_986, "1.30M"),
    ("cnn_3layer_fixed", {"kernel": 5, "width": 4, "linear_size": 512}, "mnist", 625_130, "0.63M"),
    ("cnn_3layer_fixed", {"kernel": 3, "width": 8, "linear_size": 512}, "mnist", 1_695_690, "1.70M"),
    # cifar_crown (9 small); the config's "kernel_3_width_1" really has width 8, linear_size 512
    ("cnn_2layer", {"width": 2, "linear_size": 256}, "cifar", 267_426, "267k"),
    ("cnn_4layer", {"width": 1, "linear_size": 256}, "cifar", 201_390, None),  # §1.12: 0.20–0.80M
    ("cnn_4layer", {"width": 2, "linear_size": 512}, "cifar", 799_122, None),
    ("cnn_3layer_fixed", {"kernel": 3, "width": 8, "linear_size": 512}, "cifar", 2_187_786, "2.19M"),
    ("cnn_3layer_fixed", {"kernel": 3, "width": 2, "linear_size": 128}, "cifar", 137_994, None),  # 28k–138k
    ("cnn_3layer_fixed", {"kernel": 5, "width": 1, "linear_size": 64}, "cifar", 27_946, None),
    ("cnn_3layer_fixed", {"kernel": 5, "width": 2, "linear_size": 128}, "cifar", 109_706, None),
    # cifar_crown_large (8)
    ("cnn_2layer", {"width": 8, "linear_size": 128}, "cifar", 560_106, "0.56M"),
    ("cnn_2layer", {"width": 16, "linear_size": 256}, "cifar", 2_234_314, "2.23M"),
    ("cnn_4layer", {"width": 8, "linear_size": 256}, "cifar", 1_218_602, "1.2M"),  # §1.12: 1.2–4.9M
    ("cnn_4layer", {"width": 16, "linear_size": 512}, "cifar", 4_866_122, "4.9M"),
    ("cnn_3layer_fixed", {"kernel": 3, "width": 8, "linear_size": 256}, "cifar", 1_136_394, "1.14M"),
    ("cnn_3layer_fixed", {"kernel": 3, "width": 16, "linear_size": 512}, "cifar", 4_537_866, "4.54M"),
    # dm-large and CNN7 (BatchNorm weight and bias count; running statistics are buffers)
    ("IBP_large", {}, "mnist", 13_257_290, "13.3M"),
    ("IBP_large", {}, "cifar", 17_190_602, "17.2M"),
    ("CNN7", {}, "mnist", 13_259_338, None),
    ("CNN7", {}, "cifar", 17_192_650, "17.2M"),
    # the network defaults themselves
    ("cnn_2layer", {}, "cifar", 67_670, None),
    ("cnn_3layer_fixed", {}, "cifar", 34_922, None),
]


def lower(file: str, network: str, args: dict[str, Any] | None = None) -> IRGraph:
    """Lower one network of a zoo file and infer its shapes."""
    path = MODELS / file
    graph = lower_network(path.read_text(), network=network, args=args or {}, file=str(path))
    InferShapes().run(graph)
    return graph


def rounds_to(count: int, text: str) -> bool:
    """Whether ``count`` rounds to a value written like "52k" or "1.10M" (to its last digit)."""
    scale = {"k": 1e3, "M": 1e6}[text[-1]]
    digits = text[:-1]
    unit = 10.0 ** -len(digits.split(".")[1]) if "." in digits else 1.0
    return abs(count / scale - float(digits)) <= unit / 2 + 1e-9


def _flat_cases() -> list[Any]:
    cases = []
    for file, net, fam, expected in DIFFAI:
        for ds, (count, source) in expected.items():
            cases.append(pytest.param(file, net, {**fam, **DATASETS[ds]}, count, id=f"{net}-{ds}-{source}"))
    for net, fam, ds, count, _ in CROWN:
        tag = ",".join(f"{k}{v}" for k, v in fam.items())
        cases.append(pytest.param(C, net, {**fam, **DATASETS[ds]}, count, id=f"{net}({tag})-{ds}"))
    return cases


@pytest.mark.parametrize(("file", "network", "args", "expected"), _flat_cases())
def test_parameter_count_matches_the_reference(file: str, network: str, args: dict, expected: int) -> None:
    graph = lower(file, network, args)
    assert parameter_count(graph) == expected
    assert graph.output.meta["shape"] == (args.get("classes", 10),)


@pytest.mark.parametrize(("network", "fam", "ds", "count", "rounded"), [c for c in CROWN if c[4]])
def test_crown_ibp_counts_round_to_the_derived_table(network: str, fam: dict, ds: str, count: int,
                                                      rounded: str) -> None:
    assert rounds_to(count, rounded), (network, fam, ds, count, rounded)


def test_every_zoo_network_has_an_expected_count() -> None:
    listed = {(f.name, n) for f in MODELS.glob("*.absnet") for n in list_networks(f.read_text(), file=str(f))}
    covered = {(f, n) for f, n, _, _ in DIFFAI} | {(C, n) for n, *_ in CROWN}
    assert listed == covered


def test_classes_argument_resizes_only_the_head() -> None:
    graph = lower(D, "ConvSmall", {**CIFAR, "classes": 100})
    assert graph.output.meta["shape"] == (100,)
    assert parameter_count(graph) == 125_318 + 90 * 101  # 100 -> 100 outputs instead of 10


@pytest.mark.parametrize(
    ("ds", "sizes"),
    [("mnist", [(108, 15, 15), (150, 8, 8), (342, 1, 1)]), ("cifar", [(108, 17, 17), (150, 9, 9), (342, 1, 1)])],
)
def test_densenet_pools_pad_by_one_like_diffai(ds: str, sizes: list[tuple[int, ...]]) -> None:
    graph = lower(R, "DenseNet100", DATASETS[ds])
    assert [n.meta["shape"] for n in graph.nodes() if n.op == "AvgPool2d"] == sizes


# DiffAI's models.py, directive by directive (reference/diffai.md §5.2): (op, count argument,
# only_train, num_to_keep); DeepLoss schedules are compared by op only.
DIRECTIVES = {
    "ResNetTiny_FewCombo": [
        ("CorrMaxK", 32, True), ("DecorrMin", 8, True, True), ("DecorrMin", 4, True, True), ("Concretize", True),
        ("CorrMaxK", 10, True), ("CorrelateAll", False),
    ],
    "ResNetTiny_ManyFixed": [
        ("CorrMaxK", 32, True),
        ("CorrFix", 16, True), ("DecorrMin", 16, True, True),
        ("CorrFix", 8, True), ("DecorrMin", 8, True, True),
        ("CorrFix", 8, True), ("DecorrMin", 8, True, True),
        ("CorrFix", 4, True), ("DecorrMin", 4, True, True),
        ("Concretize", True), ("CorrelateAll", False),
    ],
    "ResNetLarge_LargeCombo": [
        ("CorrMaxK", 4, True),
        ("CorrMaxK", 4, True), ("DecorrMin", 4, True, True),
        ("CorrMaxK", 4, True), ("DecorrMin", 4, True, True),
        ("DeepLoss",),
        ("CorrMaxK", 4, True), ("DecorrMin", 4, True, True),
        ("CorrMaxK", 4, True), ("DecorrMin", 2, True, True),
        ("DeepLoss",),
    ],
    "SkipNet18_Combo": [
        ("CorrFix", 20, True), ("DecorrMin", 10, True, True),
        ("CorrFix", 10, True), ("DecorrMin", 5, True, True), ("DeepLoss",),
        ("CorrFix", 5, True), ("DecorrMin", 2, True, True),
        ("CorrelateAll", False),
    ],
    "ResNetTiny": [("CorrelateAll", False)],
    "ResNet34": [("CorrelateAll", False)],
    "DenseNet100": [("CorrelateAll", False)],
}
_COUNT_ATTR = {"CorrMaxK": "num_correlate", "CorrFix": "k", "DecorrMin": "num_decorrelate"}


@pytest.mark.parametrize("network", sorted(DIRECTIVES))
def test_directives_are_diffais(network: str) -> None:
    found = []
    for n in lower(R, network).nodes():
        if n.spec.category != "directive":
            continue
        row: tuple = (n.op,)
        if n.op in _COUNT_ATTR:
            row += (n.attrs[_COUNT_ATTR[n.op]],)
        if n.op != "DeepLoss":
            row += (n.attrs["only_train"],)
        if n.op == "DecorrMin":
            row += (n.attrs["num_to_keep"],)
        found.append(row)
    assert found == DIRECTIVES[network]


# --------------------------------------------------------------------------- torch.nn mirrors
# Written by hand from the papers' code (not from the .absnet files), built on the meta device
# (shapes only, no memory): an independent check of both the zoo files and the IR's parameter rules.


class _Add(nn.Module):
    def __init__(self, *branches: nn.Module):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(b(x) for b in self.branches)


class _Cat(nn.Module):
    def __init__(self, *branches: nn.Module):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], dim=1)


def _half(n: int) -> int:  # a 3x3/stride-2/pad-1 or 4x4/stride-2/pad-1 conv
    return (n - 1) // 2 + 1


def conv_big(ci: int, n: int, c: int) -> nn.Module:
    s = n // 4
    return nn.Sequential(
        nn.Conv2d(ci, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 32, 4, 2, 1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(), nn.Conv2d(64, 64, 4, 2, 1), nn.ReLU(), nn.Flatten(),
        nn.Linear(64 * s * s, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, c),
    )


def resnet_wong(ci: int, n: int, c: int) -> nn.Module:
    def wide(i: int, o: int, down: bool) -> nn.Module:
        k1, s, ks = (4, 2, 2) if down else (3, 1, 1)
        shortcut = nn.Conv2d(i, o, ks, s, 0, bias=False)
        main = nn.Sequential(nn.Conv2d(i, o, k1, s, 1, bias=False), nn.ReLU(), nn.Conv2d(o, o, 3, 1, 1, bias=False))
        return nn.Sequential(_Add(shortcut, main), nn.ReLU())

    s = n // 4
    return nn.Sequential(
        nn.Conv2d(ci, 16, 3, 1, 1, bias=False), nn.ReLU(),
        wide(16, 16, False), wide(16, 16, False), wide(16, 32, True), wide(32, 64, True), nn.Flatten(),
        nn.Linear(64 * s * s, 1000), nn.ReLU(), nn.Linear(1000, c),
    )


def resnet18(ci: int, n: int, c: int, skip_net: bool = False) -> nn.Module:
    def basic(i: int, o: int, stride: int) -> nn.Module:
        main = nn.Sequential(nn.Conv2d(i, o, 3, stride, 1), nn.ReLU(), nn.Conv2d(o, o, 3, 1, 1))
        if stride != 1 or i != o:
            return nn.Sequential(_Add(main, nn.Conv2d(i, o, 1, stride, 0)), nn.ReLU())
        return nn.Sequential(main if skip_net else _Add(main, nn.Identity()), nn.ReLU())

    layers: list[nn.Module] = [nn.Conv2d(ci, 64, 3, 1, 1), nn.ReLU()]
    i = 64
    for stage, planes in enumerate((64, 128, 256, 512)):
        for b in range(2):
            layers.append(basic(i, planes, 2 if stage and not b else 1))
            i = planes
    s = _half(_half(_half(n)))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512 * s * s, 512), nn.ReLU(),
                         nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, c))


def densenet100(ci: int, n: int, c: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(ci, 24, 3, 1, 1)]
    ch = 24
    for block in range(3):
        for _ in range(16):
            layers.append(_Cat(nn.Identity(), nn.Sequential(nn.ReLU(), nn.Conv2d(ch, 48, 1), nn.ReLU(),
                                                            nn.Conv2d(48, 12, 3, 1, 1))))
            ch += 12
        if block < 2:
            layers += [nn.ReLU(), nn.Conv2d(ch, ch // 2, 1), nn.AvgPool2d(2, 2, padding=1)]
            ch //= 2
    return nn.Sequential(*layers, nn.ReLU(), nn.AvgPool2d(8, 8, padding=1), nn.Flatten(), nn.Linear(ch, c))


def cnn7(ci: int, n: int, c: int) -> nn.Module:
    w, s = 64, _half(n)
    body: list[nn.Module] = []
    for i, o, stride in ((ci, w, 1), (w, w, 1), (w, 2 * w, 2), (2 * w, 2 * w, 1), (2 * w, 2 * w, 1)):
        body += [nn.Conv2d(i, o, 3, stride, 1), nn.BatchNorm2d(o), nn.ReLU()]
    return nn.Sequential(*body, nn.Flatten(), nn.Linear(2 * w * s * s, 512), nn.BatchNorm1d(512), nn.ReLU(),
                         nn.Linear(512, c))


def cnn_3layer_fixed_k5_w2(ci: int, n: int, c: int) -> nn.Module:
    w, h = 2, (n - 4) // 4
    return nn.Sequential(
        nn.Conv2d(ci, 4 * w, 5, 1, 1), nn.ReLU(), nn.Conv2d(4 * w, 8 * w, 5, 1, 1), nn.ReLU(),
        nn.Conv2d(8 * w, 8 * w, 4, 4, 0), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * w * h * h, 128), nn.ReLU(), nn.Linear(128, c),
    )


MIRRORS = [
    (D, "ConvBig", {}, conv_big),
    (R, "ResNetWong", {}, resnet_wong),
    (R, "ResNet18", {}, resnet18),
    (R, "SkipNet18", {}, lambda ci, n, c: resnet18(ci, n, c, skip_net=True)),
    (R, "DenseNet100", {}, densenet100),
    (C, "CNN7", {}, cnn7),
    (C, "cnn_3layer_fixed", {"kernel": 5, "width": 2, "linear_size": 128}, cnn_3layer_fixed_k5_w2),
]


@pytest.mark.parametrize("ds", ["mnist", "cifar"])
@pytest.mark.parametrize(("file", "network", "fam", "build"), MIRRORS, ids=[m[1] for m in MIRRORS])
def test_torch_mirror_has_the_same_parameter_count(file: str, network: str, fam: dict, build: Any, ds: str) -> None:
    args = {**fam, **DATASETS[ds]}
    ci, n = args.get("in_ch", 1), args.get("size", 28)
    with torch.device("meta"):
        model = build(ci, n, 10).eval()
        out = model(torch.empty(2, ci, n, n))
    assert tuple(out.shape) == (2, 10)  # the hand-written Linear sizes fit the shapes
    assert sum(p.numel() for p in model.parameters()) == parameter_count(lower(file, network, args))
