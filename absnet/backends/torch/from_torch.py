"""Turn a torch ``nn.Sequential`` into ``.absnet`` source and an AbstractNetwork with its weights.

Each module becomes one statement, so module ``i``'s ``weight`` lands in ``layers.i.weight``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from absnet.diagnostics import AbsnetError, Diagnostic


def _pair(v: int | Sequence[int]) -> str:
    a, b = (v, v) if isinstance(v, int) else tuple(v)
    return str(a) if a == b else f"[{a}, {b}]"


def _conv(m: nn.Conv2d) -> str:
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise ValueError("only numeric zero padding is supported")
    return (f"Conv2d({m.out_channels}, kernel={_pair(m.kernel_size)}, stride={_pair(m.stride)}, "
            f"padding={_pair(m.padding)}, dilation={_pair(m.dilation)}, groups={m.groups}, "
            f"bias={'true' if m.bias is not None else 'false'})")


def _pool(name: str) -> Callable[[nn.Module], str]:
    def f(m: nn.Module) -> str:
        if getattr(m, "ceil_mode", False) or getattr(m, "dilation", 1) not in (1, (1, 1)):
            raise ValueError("ceil_mode and dilation are not supported")
        if name == "AvgPool2d" and not m.count_include_pad:
            raise ValueError("count_include_pad=False is not supported")
        stride = m.stride if m.stride is not None else m.kernel_size
        return f"{name}({_pair(m.kernel_size)}, stride={_pair(stride)}, padding={_pair(m.padding)})"

    return f


def _bn(name: str) -> Callable[[nn.Module], str]:
    def f(m: nn.Module) -> str:
        if not m.track_running_stats:
            raise ValueError("track_running_stats=False is not supported")
        return f"{name}(eps={m.eps!r}, momentum={m.momentum!r}, affine={'true' if m.affine else 'false'})"

    return f


def _softplus(m: nn.Softplus) -> str:
    if m.beta != 1:
        raise ValueError("only beta=1 is supported")
    return "Softplus()"


WRITERS: dict[type, Callable[[nn.Module], str]] = {
    nn.Linear: lambda m: f"Linear({m.out_features}, bias={'true' if m.bias is not None else 'false'})",
    nn.Conv2d: _conv,
    nn.ReLU: lambda m: "ReLU()",
    nn.LeakyReLU: lambda m: f"LeakyReLU({m.negative_slope!r})",
    nn.Sigmoid: lambda m: "Sigmoid()",
    nn.Tanh: lambda m: "Tanh()",
    nn.Softplus: _softplus,
    nn.ELU: lambda m: f"ELU({m.alpha!r})",
    nn.Flatten: lambda m: "Flatten()",
    nn.Identity: lambda m: "Identity()",
    nn.Dropout: lambda m: f"Dropout({m.p!r})",
    nn.AvgPool2d: _pool("AvgPool2d"),
    nn.MaxPool2d: _pool("MaxPool2d"),
    nn.AdaptiveAvgPool2d: lambda m: f"AdaptiveAvgPool2d({_pair(m.output_size)})",
    nn.BatchNorm1d: _bn("BatchNorm1d"),
    nn.BatchNorm2d: _bn("BatchNorm2d"),
}


def to_source(
    module: nn.Sequential, input_shape: Sequence[int], *, name: str = "Imported",
    input_range: tuple[float, float] = (0.0, 1.0),
) -> str:
    """``.absnet`` source for ``module``; every unsupported module is reported at once (E501)."""
    if not isinstance(module, nn.Sequential):
        raise AbsnetError(Diagnostic("E501", f"from_torch takes an nn.Sequential, not {type(module).__name__}",
                                     help="wrap the layers: nn.Sequential(*layers)"))
    lines, problems = [], []
    for i, m in enumerate(module):
        writer = WRITERS.get(type(m))
        try:
            if writer is None:
                raise ValueError("no absnet layer corresponds to it")
            lines.append(f"  {writer(m)}    # {i}")
        except ValueError as e:
            problems.append(Diagnostic("E501", f"module {i} ({type(m).__name__}): {e}",
                                       notes=(f"supported: {', '.join(t.__name__ for t in WRITERS)}",)))
    if problems:
        raise AbsnetError(problems)
    lo, hi = input_range
    head = f"network {name} {{\n  input [{', '.join(map(str, input_shape))}] range [{lo!r}, {hi!r}]\n"
    return head + "\n".join(lines) + "\n}\n"


def from_torch(
    module: nn.Sequential, input_shape: Sequence[int], *, name: str = "Imported",
    input_range: tuple[float, float] = (0.0, 1.0),
):
    """Compile ``module`` into an AbstractNetwork with the same weights (``net.source`` holds the text).

    >>> import torch, absnet
    >>> seq = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> net = absnet.from_torch(seq, input_shape=(1, 2, 2))
    >>> bool(torch.allclose(net(torch.ones(1, 1, 2, 2)), seq(torch.ones(1, 1, 2, 2))))
    True
    """
    from absnet.api import compile_source

    text = to_source(module, input_shape, name=name, input_range=input_range)
    net = compile_source(text, file=f"<from_torch {name}>")
    sd = {f"layers.{k}": v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    net.load_state_dict(sd, strict=True)
    net.train(module.training)
    return net
