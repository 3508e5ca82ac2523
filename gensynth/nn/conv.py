"""Convolutions that choose their precision under autocast by what bounds them: arithmetic or reading the weight.

A convolution with fewer output elements than weight elements (OASIS's 1024-channel layers on 2x2..8x8 maps at
small batches) does few operations per weight number: its time goes into reading the weight, and under autocast
into casting the weight to bf16/fp16 and the weight gradient back. Such calls run in fp32 -- faster, and closer
to fp32 numerics; the compute-bound calls keep autocast's low precision. Outside autocast nothing changes.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def conv_output_numel(x: Tensor, out_channels: int, kernel_size, stride, padding, dilation) -> int:
    """Elements of a 2D convolution's output for input ``x`` (B, C, H, W) (numeric padding)."""
    out = x.shape[0] * out_channels
    for i, n in enumerate(x.shape[-2:]):
        k = dilation[i] * (kernel_size[i] - 1) + 1
        out *= (n + 2 * padding[i] - k) // stride[i] + 1
    return out


def weight_bound(x: Tensor, weight: Tensor, output_numel: int) -> bool:
    """True when a convolution of ``x`` has fewer output elements than weight elements (few FLOPs per weight)."""
    return output_numel < weight.numel()


def autocast_active(x: Tensor) -> bool:
    return torch.is_autocast_enabled(x.device.type)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and keys) that runs in fp32 under autocast when it is weight-bound."""

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.padding, str) or not autocast_active(x):
            return super().forward(x)
        n = conv_output_numel(x, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation)
        if not weight_bound(x, self.weight, n):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())
