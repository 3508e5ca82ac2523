"""CC-FPSE's conditional convolution: a depthwise 3x3 convolution whose kernel differs at every pixel.

x (N, C, H, W) and predicted kernels (N, 9C, H, W) with the official channel order (channel c, tap t at index
9c + t, taps row-major over the 3x3 window, zero padding 1, stride 1) give

    out[n, c, i, j] = sum_t kernels[n, 9c + t, i, j] * x_padded[n, c, i + t // 3, j + t % 3]

with no bias and no normalisation of the kernels (as the official ``DepthConv``).

Two implementations compute it:

* ``unfold``: the official way, ``F.unfold`` materialises the (N, 9C, H, W) patches, multiplies and sums; autograd
  keeps the unfolded patches for the backward pass (9x the activation);
* ``shifted``: the sum of nine products of the kernels' tap planes with shifted views of the zero-padded input,
  with a hand-written backward (:class:`_ShiftedDepthwise`) that keeps only the inputs and writes the kernels'
  gradient tap by tap.

Both give the same numbers up to floating-point summation order. ``benchmarks/ccfpse_depthconv.py`` measures
their peak memory and time: ``shifted`` is the default (see benchmarks/README.md, "CC-FPSE").
"""
from __future__ import annotations

from typing import Literal

import torch
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


class _ShiftedDepthwise(torch.autograd.Function):
    """The shifted-products form with a hand-written backward that keeps nothing but its inputs.

    Forward: out = sum_t taps_t * shift_t(x_padded), accumulated in place. Backward: the kernels' gradient is written
    tap by tap into one (N, 9C, H, W) tensor (grad_t = grad_out * shift_t(x_padded)); the input's gradient is the sum
    of the taps' products shifted back, accumulated in place into a padded buffer. Autograd through the plain
    expression would instead build a full-size zero tensor for every tap's slice of the kernels. First-order only."""

    @staticmethod
    def forward(ctx, x: Tensor, kernels: Tensor) -> Tensor:
        n, c, h, w = x.shape
        padded = F.pad(x, (1, 1, 1, 1))
        taps = kernels.view(n, c, 9, h, w)
        out = taps[:, :, 0] * padded[:, :, :h, :w]
        for t in range(1, 9):
            dy, dx = divmod(t, 3)
            out.addcmul_(taps[:, :, t], padded[:, :, dy:dy + h, dx:dx + w])
        ctx.save_for_backward(x, kernels)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        if torch.is_grad_enabled():
            raise RuntimeError("the shifted per-pixel depthwise conv is first-order only (create_graph=True was "
                               "asked); use model.generator_options.depthwise=unfold for double backward")
        x, kernels = ctx.saved_tensors
        n, c, h, w = x.shape
        grad_x = grad_k = None
        if ctx.needs_input_grad[1]:
            padded = F.pad(x, (1, 1, 1, 1))
            grad_k = torch.empty((n, c, 9, h, w), dtype=kernels.dtype, device=kernels.device)
            for t in range(9):
                dy, dx = divmod(t, 3)
                torch.mul(grad, padded[:, :, dy:dy + h, dx:dx + w], out=grad_k[:, :, t])
            grad_k = grad_k.view(n, 9 * c, h, w)
        if ctx.needs_input_grad[0]:
            taps = kernels.view(n, c, 9, h, w)
            grad_padded = torch.zeros((n, c, h + 2, w + 2), dtype=x.dtype, device=x.device)
            for t in range(9):
                dy, dx = divmod(t, 3)
                grad_padded[:, :, dy:dy + h, dx:dx + w].addcmul_(grad, taps[:, :, t])
            grad_x = grad_padded[:, :, 1:h + 1, 1:w + 1].contiguous()
        return grad_x, grad_k


def depthwise_shifted(x: Tensor, kernels: Tensor) -> Tensor:
    """x (N, C, H, W), kernels (N, 9C, H, W) -> (N, C, H, W) as a sum of nine shifted products."""
    _check(x, kernels)
    return _ShiftedDepthwise.apply(x, kernels)


IMPLEMENTATIONS = {"shifted": depthwise_shifted, "unfold": depthwise_unfold}


def depthwise_per_pixel(x: Tensor, kernels: Tensor, impl: Impl = "shifted") -> Tensor:
    """The per-pixel depthwise 3x3 convolution with the chosen implementation (see the module docstring)."""
    try:
        fn = IMPLEMENTATIONS[impl]
    except KeyError:
        raise ValueError(f"per-pixel depthwise conv: unknown implementation {impl!r}; known: "
                         f"{', '.join(IMPLEMENTATIONS)}") from None
    return fn(x, kernels)
