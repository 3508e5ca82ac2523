"""CC-FPSE's conditional convolution: a depthwise 3x3 convolution whose kernel differs at every pixel.

x (N, C, H, W) and predicted kernels (N, 9C, H, W) with the official channel order (channel c, tap t at index
9c + t, taps row-major over the 3x3 window, zero padding 1, stride 1) give

    out[n, c, i, j] = sum_t kernels[n, 9c + t, i, j] * x_padded[n, c, i + t // 3, j + t % 3]

with no bias and no normalisation of the kernels (as the official ``DepthConv``).

Two implementations compute it:

* ``unfold``: the official way, ``F.unfold`` materialises the (N, 9C, H, W) patches, multiplies and sums; autograd
  keeps the unfolded patches for the backward pass (9x the activation);
* ``shifted``: the sum of nine products of the kernels' tap planes with shifted views of the zero-padded input; it
  keeps only the padded input (one activation) for the backward pass.

Both give the same numbers up to floating-point summation order. ``benchmarks/ccfpse_depthconv.py`` measures
their peak memory and time: ``shifted`` is the default (see benchmarks/README.md, "CC-FPSE").
"""
from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

Impl = Literal["shifted", "unfold"]


def _check(x: Tensor, kernels: Tensor) -> None:
    n, c, h, w = x.shape
    if kernels.shape != (n, 9 * c, h, w):
        raise ValueError(f"per-pixel depthwise conv: kernels must be (N, 9C, H, W) = {(n, 9 * c, h, w)} for x of "
                         f"shape {tuple(x.shape)}, got {tuple(kernels.shape)}")


def depthwise_unfold(x: Tensor, kernels: Tensor) -> Tensor:
    """x (N, C, H, W), kernels (N, 9C, H, W) -> (N, C, H, W) through F.unfold (the official computation)."""
    _check(x, kernels)
    n, c, h, w = x.shape
    patches = F.unfold(x, kernel_size=3, padding=1).view(n, c, 9, h, w)
    return (patches * kernels.view(n, c, 9, h, w)).sum(dim=2)


def depthwise_shifted(x: Tensor, kernels: Tensor) -> Tensor:
    """x (N, C, H, W), kernels (N, 9C, H, W) -> (N, C, H, W) as a sum of nine shifted products."""
    _check(x, kernels)
    n, c, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    taps = kernels.view(n, c, 9, h, w)
    out = None
    for t in range(9):
        dy, dx = divmod(t, 3)
        term = taps[:, :, t] * padded[:, :, dy:dy + h, dx:dx + w]
        out = term if out is None else out.add_(term)  # in place: mul's backward needs its inputs only
    return out


IMPLEMENTATIONS = {"shifted": depthwise_shifted, "unfold": depthwise_unfold}


def depthwise_per_pixel(x: Tensor, kernels: Tensor, impl: Impl = "shifted") -> Tensor:
    """The per-pixel depthwise 3x3 convolution with the chosen implementation (see the module docstring)."""
    try:
        fn = IMPLEMENTATIONS[impl]
    except KeyError:
        raise ValueError(f"per-pixel depthwise conv: unknown implementation {impl!r}; known: "
                         f"{', '.join(IMPLEMENTATIONS)}") from None
    return fn(x, kernels)
