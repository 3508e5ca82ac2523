"""1x1 convolutions on the CPU as matrix products over the channel dimension, in the input's own memory format.

A 1x1 convolution (stride 1, no padding) is a matrix product per image: y_b (O, H*W) = W (O, C) @ x_b (C, H*W).
PyTorch's CPU dispatcher sends such calls to its native kernel (``_slow_conv2d``) when one thread runs them at a
batch under 16; that kernel zero-fills a fresh input gradient before writing it and converts an output gradient
whose memory format differs from the input's (OASIS's last discriminator layer: NHWC input, NCHW gradient from the
loss). Here each pass is one matrix product that reads either layout through its strides:

    x NHWC: X (B*H*W, C) is a view, and y = X @ W^T is the NHWC output;  x NCHW: y_b = W @ x_b per image
    input grad   (NHWC) G (B*H*W, O) @ W   or   (NCHW) W^T @ g_b
    weight grad  sum_b g_b (O, H*W) @ x_b^T (H*W, C)   [+ an extra rank-R term]

The output and the input gradient come in the input's memory format, as PyTorch's convolutions return them.
:func:`prefers_pointwise` says when: CPU, fp32/fp64, groups 1, a 1x1 kernel, stride 1, no padding.
"""
from __future__ import annotations

import torch
from torch import Tensor

Pair = tuple[int, int]


def is_pointwise(weight: Tensor, stride: Pair, padding: Pair, groups: int = 1) -> bool:
    """True for a 1x1 kernel at stride 1 without padding and one group (dilation has no effect on a 1x1 kernel)."""
    return (groups == 1 and weight.dim() == 4 and tuple(weight.shape[-2:]) == (1, 1)
            and tuple(stride) == (1, 1) and tuple(padding) == (0, 0))


def prefers_pointwise(x: Tensor, weight: Tensor, stride: Pair, padding: Pair, groups: int = 1) -> bool:
    """True when :func:`pointwise_conv2d_forward` should run this call: a pointwise convolution (:func:`is_pointwise`)
    of a 4D CPU input of ``weight``'s dtype, fp32 or fp64."""
    return (x.device.type == "cpu" and x.dim() == 4 and x.dtype == weight.dtype
            and x.dtype in (torch.float32, torch.float64) and is_pointwise(weight, stride, padding, groups))


def _is_nhwc(t: Tensor) -> bool:
    """True when ``t`` (B, C, H, W) is stored channels-last and not also NCHW-contiguous (a 1x1 map is both)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _images_by_position(t: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H*W, C) view when ``t`` is NHWC or NCHW contiguous, else a copy in NCHW."""
    b, c = t.shape[:2]
    if not (_is_nhwc(t) or t.is_contiguous()):
        t = t.contiguous()
    return t.permute(0, 2, 3, 1).reshape(b, -1, c)


def pointwise_conv2d_forward(x: Tensor, weight: Tensor) -> Tensor:
    """conv2d(x, weight) without bias for a 1x1 ``weight`` (O, C, 1, 1): x (B, C, H, W) -> (B, O, H, W) in x's
    memory format (NHWC when x is channels-last, else NCHW contiguous)."""
    b, _, h, w = x.shape
    w2 = weight.reshape(weight.shape[0], -1)  # (O, C)
    xs = _images_by_position(x)  # (B, L, C)
    if _is_nhwc(x):
        y = torch.mm(xs.reshape(-1, xs.shape[-1]), w2.t())  # (B*L, O)
        return y.view(b, h, w, -1).permute(0, 3, 1, 2)
    y = x.new_empty(b, w2.shape[0], h * w)
    for i in range(b):
        torch.mm(w2, xs[i].t(), out=y[i])  # (O, L)
    return y.view(b, -1, h, w)


def pointwise_conv2d_backward(grad: Tensor, x: Tensor, weight: Tensor, need_input: bool, need_weight: bool,
                              extra: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor | None, Tensor | None]:
    """(grad_x, grad_weight) of :func:`pointwise_conv2d_forward` for the output gradient ``grad`` (B, O, H, W) in
    any memory format. ``extra = (left (O, R), right (R, C))`` adds ``left @ right`` to the weight gradient.
    grad_x has x's memory format; grad_weight is contiguous with ``weight``'s shape."""
    b, c, h, w = x.shape
    out_channels = weight.shape[0]
    w2 = weight.reshape(out_channels, -1)  # (O, C)
    gs = _images_by_position(grad)  # (B, L, O)
    grad_x = grad_w = None
    if need_input:
        if _is_nhwc(x) and _is_nhwc(grad):
            grad_x = torch.mm(gs.reshape(-1, out_channels), w2).view(b, h, w, c).permute(0, 3, 1, 2)
        elif _is_nhwc(x):  # per image: folding B into the rows would copy an NCHW gradient
            grad_x = x.new_empty(b, h * w, c)
            for i in range(b):
                torch.mm(gs[i], w2, out=grad_x[i])  # (L, C)
            grad_x = grad_x.view(b, h, w, c).permute(0, 3, 1, 2)
        else:
            grad_x = x.new_empty(b, c, h * w)
            for i in range(b):
                torch.mm(w2.t(), gs[i].t(), out=grad_x[i])  # (C, L)
            grad_x = grad_x.view(b, c, h, w)
    if need_weight:
        xs = _images_by_position(x)  # (B, L, C)
        if _is_nhwc(x) and _is_nhwc(grad):  # one product over all positions of the batch
            grad_w = torch.mm(gs.reshape(-1, out_channels).t(), xs.reshape(-1, c))
        else:
            grad_w = torch.mm(gs[0].t(), xs[0])
            for i in range(1, b):
                grad_w.addmm_(gs[i].t(), xs[i])
        if extra is not None:
            left, right = extra
            grad_w.addmm_(left.to(grad_w.dtype), right.to(grad_w.dtype))
        grad_w = grad_w.view_as(weight)
    return grad_x, grad_w
