"""Convolutions that choose their precision under autocast by what bounds them: arithmetic or reading the weight.

A convolution with far fewer output elements than weight elements (under a quarter: OASIS's 256- to 1024-channel
layers on maps of up to 16x16 at batch 1) does few operations per weight number: its time goes into reading the
weight, and under autocast into casting the weight to bf16/fp16 and the weight gradient back. Such calls run in
fp32 -- faster, and closer to fp32 numerics; the compute-bound calls keep autocast's low precision. Outside autocast
nothing changes. (:func:`weight_bound`, output smaller than weight, is the spectral-norm layers' choice between
scaling the output and scaling the weight, which holds at any precision.)
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


#: under autocast, a convolution runs in fp32 when its output has fewer than 1/AUTOCAST_FP32_RATIO as many elements as
#: its weight. Chosen by measurement on a 2-core AMX CPU, bf16 OASIS iteration at batch 1: ADE20K 64x64 took
#: 2.04 / 1.70 / 1.83 / 1.81 / 1.78 s with ratio 1 / 2 / 3 / 4 / 8 (2.60 s with every convolution in bf16);
#: Cityscapes 64x128 showed no difference beyond the noise (2.6-3.5 s across ratios and runs).
AUTOCAST_FP32_RATIO = 4.0


def autocast_keeps_fp32(x: Tensor, weight: Tensor, output_numel: int) -> bool:
    """True when a convolution under autocast is better run in fp32: so few outputs per weight number that casting
    the weight (and its gradient back) costs more than low precision saves."""
    return output_numel * AUTOCAST_FP32_RATIO < weight.numel()


def autocast_active(x: Tensor) -> bool:
    return torch.is_autocast_enabled(x.device.type)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and keys) that runs in fp32 under autocast when it is weight-bound
    (:func:`autocast_keeps_fp32`)."""

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.padding, str) or not autocast_active(x):
            return super().forward(x)
        n = conv_output_numel(x, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation)
        if not autocast_keeps_fp32(x, self.weight, n):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())
