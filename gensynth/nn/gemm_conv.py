"""Weight-bound convolutions on the CPU as one matrix product over unfolded input columns.

OASIS's deepest layers apply a 1024x1024x3x3 weight (9.4M numbers) to maps of 2x4 or 4x8 positions: a few hundred
times more weight numbers than output numbers. Such a call is bound by memory traffic over the weight, and the CPU
convolution kernels add passes of their own over it (oneDNN reorders the weight on every call; its backward reads
the weight transposed). Written as matrix products over the unfolded input, each pass reads or writes the weight
row by row, once:

    forward      y (O, B*L)    = W (O, C*kh*kw) @ cols (C*kh*kw, B*L)         cols = unfold(x), L = H'*W'
    input grad   g_cols^T      = g^T (B*L, O) @ W (O, C*kh*kw);  g_x = fold(g_cols)
    weight grad  g_W (O, C*kh*kw) = g (O, B*L) @ cols^T  [+ extra rank-R term, in the same product]

The extra term lets spectral normalisation add sigma's rank-1 weight gradient inside the product instead of in a
second pass over the weight (:class:`gensynth.nn.spectral.SpectralConv2d`).

:func:`prefers_gemm` says when: CPU, groups 1, fp32/fp64, and fewer than 1/GEMM_WEIGHT_PER_OUTPUT output elements
per weight element. 1x1 convolutions also run here, without unfolding (:mod:`gensynth.nn.pointwise_conv`;
:func:`prefers_matrix_products` covers both). Results equal the convolution's up to floating-point rounding
(tests/test_gemm_conv.py, tests/test_pointwise_conv.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gensynth.nn.grad_buffer import GradientBuffer
from gensynth.nn.pointwise_conv import (is_pointwise, pointwise_conv2d_backward, pointwise_conv2d_forward,
                                        prefers_pointwise)

Pair = tuple[int, int]

#: a CPU convolution runs as a matrix product when its weight has more than this many elements per output element.
#: Chosen by measurement on a 2-core AMX CPU, 1 thread, fp32, 3x3 kernels, convolution time / GEMM time
#: (benchmarks/README.md, "Weight-bound convolutions as matrix products"):
#: weight/output 300-1150 (1024->1024 on 2x4 and 4x8, 512->512 on 2x4): forward 0.95-2.6x, backward 1.1-2.1x;
#: 70-100 (1024->1024 and 1024->512 on 8x16, 1024->256 on 4x8 at batch 3): forward 0.6-1.4x, backward 0.9-1.3x;
#: 6-36 (256-512 channels on 8x16 to 16x32): forward 0.6-0.9x.
GEMM_WEIGHT_PER_OUTPUT = 64.0


def prefers_gemm(x: Tensor, weight: Tensor, output_numel: int, groups: int = 1) -> bool:
    """True when a zero-padded convolution of ``x`` (B, C, H, W) with ``weight`` (O, C, kh, kw) is weight-bound
    enough that :func:`gemm_conv2d` runs it faster: CPU, one group, fp32/fp64 input and weight of one dtype."""
    return (x.device.type == "cpu" and groups == 1 and x.dim() == 4 and x.dtype == weight.dtype
            and x.dtype in (torch.float32, torch.float64)
            and output_numel * GEMM_WEIGHT_PER_OUTPUT < weight.numel())


def prefers_matrix_products(x: Tensor, weight: Tensor, output_numel: int, stride: Pair, padding: Pair,
                            groups: int = 1) -> bool:
    """True when :func:`gemm_conv2d` should run a zero-padded convolution: weight-bound (:func:`prefers_gemm`) or
    pointwise (:func:`gensynth.nn.pointwise_conv.prefers_pointwise`), and outside autocast (which would run the
    products in low precision: :mod:`gensynth.nn.conv` turns autocast off for the calls it keeps in fp32)."""
    if torch.is_autocast_enabled(x.device.type):
        return False
    return prefers_gemm(x, weight, output_numel, groups) or prefers_pointwise(x, weight, stride, padding, groups)


def _columns(x: Tensor, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair) -> tuple[Tensor, Pair]:
    """(cols (C*kh*kw, B*L), (H', W')): the unfolded input, one column per output position, batch-major."""
    b = x.shape[0]
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (B, C*kh*kw, L)
    size = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, k, s, p, d in zip(x.shape[-2:], kernel, stride, padding, dilation))
    if b == 1:
        return cols[0], size
    return cols.transpose(0, 1).reshape(cols.shape[1], -1), size


def gemm_conv2d_forward(x: Tensor, weight: Tensor, stride: Pair, padding: Pair, dilation: Pair) -> Tensor:
    """conv2d(x, weight) without bias, as W @ unfold(x): x (B, C, H, W), weight (O, C, kh, kw) -> (B, O, H', W')
    contiguous; a pointwise (1x1) weight skips the unfolding and keeps x's memory format
    (:mod:`gensynth.nn.pointwise_conv`)."""
    if is_pointwise(weight, stride, padding):
        return pointwise_conv2d_forward(x, weight)
    out_channels = weight.shape[0]
    cols, (h, w) = _columns(x, tuple(weight.shape[-2:]), stride, padding, dilation)
    y = torch.mm(weight.reshape(out_channels, -1), cols)  # (O, B*L)
    if x.shape[0] == 1:
        return y.view(1, out_channels, h, w)
    return y.view(out_channels, x.shape[0], h, w).transpose(0, 1).contiguous()


def gemm_conv2d_backward(grad: Tensor, x: Tensor, weight: Tensor, stride: Pair, padding: Pair, dilation: Pair,
                         need_input: bool, need_weight: bool,
                         extra: tuple[Tensor, Tensor] | None = None,
                         grad_buffer: GradientBuffer | None = None) -> tuple[Tensor | None, Tensor | None]:
    """(grad_x, grad_weight) of :func:`gemm_conv2d_forward` for the output gradient ``grad`` (B, O, H', W').

    ``extra = (left (O, R), right (R, C*kh*kw))`` adds ``left @ right`` to the weight gradient within the same
    matrix product. grad_weight has ``weight``'s shape and is contiguous; with ``grad_buffer`` it is written into
    the memory that buffer keeps from the previous backward when nothing else uses it any more (not for a pointwise
    weight, whose gradient is small: :mod:`gensynth.nn.pointwise_conv`)."""
    if is_pointwise(weight, stride, padding):
        return pointwise_conv2d_backward(grad, x, weight, need_input, need_weight, extra)
    b, out_channels = grad.shape[0], grad.shape[1]
    kernel = tuple(weight.shape[-2:])
    g = grad.reshape(out_channels, -1) if b == 1 else grad.transpose(0, 1).reshape(out_channels, -1)  # (O, B*L)
    grad_x = grad_w = None
    if need_input:
        g_cols_t = torch.mm(g.t(), weight.reshape(out_channels, -1))  # (B*L, C*kh*kw): reads W row by row
        g_cols = g_cols_t.view(b, -1, g_cols_t.shape[1]).transpose(1, 2)  # (B, C*kh*kw, L)
        grad_x = F.fold(g_cols, tuple(x.shape[-2:]), kernel, dilation=dilation, padding=padding, stride=stride)
    if need_weight:
        cols, _ = _columns(x, kernel, stride, padding, dilation)
        lhs, rhs = g, cols.t()
        if extra is not None:
            left, right = extra
            lhs, rhs = torch.cat([g, left.to(g.dtype)], dim=1), torch.cat([rhs, right.to(g.dtype)])
        out = None if grad_buffer is None else grad_buffer.take(weight)
        if out is None:
            grad_w = torch.mm(lhs, rhs).view_as(weight)
        else:
            torch.mm(lhs, rhs, out=out.view(out_channels, -1))
            grad_w = out
    return grad_x, grad_w


class _GemmConv2d(torch.autograd.Function):
    """conv2d(x, weight, bias) through :func:`gemm_conv2d_forward` / :func:`gemm_conv2d_backward`. The backward
    keeps the graph (for a second derivative, e.g. a gradient penalty) by differentiating the plain convolution."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, grad_buffer=None):
        y = gemm_conv2d_forward(x, weight, stride, padding, dilation)
        if bias is not None:
            y.add_(bias.view(1, -1, 1, 1))
        ctx.save_for_backward(x, weight, bias)
        ctx.conf = (stride, padding, dilation, grad_buffer)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        stride, padding, dilation, grad_buffer = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            with torch.enable_grad():
                inputs = [t for t, need in ((x, need_x), (weight, need_w), (bias, need_b)) if need]
                y = F.conv2d(x, weight, bias, stride, padding, dilation)
                grads = iter(torch.autograd.grad(y, inputs, grad, create_graph=True))
            return (next(grads) if need_x else None, next(grads) if need_w else None,
                    next(grads) if need_b else None, None, None, None, None)
        gx, gw = gemm_conv2d_backward(grad, x, weight, stride, padding, dilation, need_x, need_w,
                                      grad_buffer=grad_buffer)
        gb = grad.sum(dim=(0, 2, 3)) if need_b else None
        return gx, gw, gb, None, None, None, None


def gemm_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair, padding: Pair,
                dilation: Pair, grad_buffer: GradientBuffer | None = None) -> Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation)`` (groups 1, zero padding) computed as matrix
    products: x (B, C, H, W), weight (O, C, kh, kw), bias (O,) or None -> (B, O, H', W'), differentiable.
    ``grad_buffer``: where the weight gradient may be written (:class:`gensynth.nn.grad_buffer.GradientBuffer`)."""
    if weight.dim() != 4 or x.dim() != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"gemm_conv2d: input {tuple(x.shape)} and weight {tuple(weight.shape)} do not match "
                         f"(need x (B, C, H, W) and weight (O, C, kh, kw), groups 1)")
    return _GemmConv2d.apply(x, weight, bias, tuple(stride), tuple(padding), tuple(dilation), grad_buffer)
