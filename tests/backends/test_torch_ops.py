"""TorchOps' own code paths agree with torch's reference operators (values and gradients, float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from absnet.backends.torch.ops import TorchOps


@pytest.mark.parametrize(
    ("rows", "kernel", "stride", "padding", "output_padding", "size"),
    [(16, (4, 4), (2, 2), (0, 0), (0, 0), 13), (8, (3, 3), (1, 1), (1, 1), (0, 0), 12),
     (6, (4, 4), (2, 2), (1, 1), (1, 1), 7), (3, (5, 3), (3, 2), (2, 1), (2, 1), 6)],
)
def test_one_channel_conv_transpose_matches_torch(rows: int, kernel: tuple[int, int], stride: tuple[int, int],
                                                  padding: tuple[int, int], output_padding: tuple[int, int],
                                                  size: int) -> None:
    g = torch.Generator().manual_seed(rows)
    x = torch.randn((5, rows, size, size + 1), generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn((rows, 1, *kernel), generator=g, dtype=torch.float64, requires_grad=True)
    got = TorchOps().conv_transpose(x, w, stride, padding, output_padding, (1, 1), 1)
    want = F.conv_transpose2d(x, w, None, stride, padding, output_padding)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want)
    weight = torch.randn(want.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((got * weight).sum(), (x, w)),
                    torch.autograd.grad((want * weight).sum(), (x, w)), strict=True):
        torch.testing.assert_close(a, b)
