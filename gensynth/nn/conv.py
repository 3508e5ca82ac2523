"""Convolutions that choose their precision under autocast by what bounds them: arithmetic or reading the weight.

A convolution with far fewer output elements than weight elements (under 1/64: OASIS's 512- to 1024-channel
layers on maps of up to 8x16 at batch 1) does few operations per weight number: its time goes into reading the
weight, and under autocast into casting the weight to bf16/fp16 and the weight gradient back. Such calls run in
fp32 -- faster, and closer to fp32 numerics (on the CPU as matrix products, :mod:`gensynth.nn.gemm_conv`); the
other calls keep autocast's low precision. Outside autocast nothing changes. (:func:`weight_bound`, output smaller
than weight, is the spectral-norm layers' choice between scaling the output and scaling the weight, which holds at
any precision.)
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from gensynth.nn.gemm_conv import gemm_conv2d, prefers_matrix_products
from gensynth.nn.grad_buffer import layer_gradient_buffer


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
#: its weight. Chosen by measurement on a 2-core AMX CPU, bf16 OASIS iteration at batch 1. Before weight-bound calls
#: ran as matrix products, ADE20K 64x64 took 2.04 / 1.70 / 1.83 / 1.81 / 1.78 s with ratio 1 / 2 / 3 / 4 / 8 (2.60 s
#: with every convolution in bf16). With them (the same 64 as gensynth.nn.gemm_conv.GEMM_WEIGHT_PER_OUTPUT), two runs
#: interleaved in one process, median of per-round time ratios against ratio 4: Cityscapes 64x128 1.07 / 1.06 / 1.08
#: faster with ratio 16 / 32 / 64 (1.07 at 64 without huge pages), ADE20K 1.02 / 1.03 with ratio 16 / 64.
AUTOCAST_FP32_RATIO = 64.0


def autocast_keeps_fp32(x: Tensor, weight: Tensor, output_numel: int) -> bool:
    """True when a convolution under autocast is better run in fp32: so few outputs per weight number that casting
    the weight (and its gradient back) costs more than low precision saves."""
    return output_numel * AUTOCAST_FP32_RATIO < weight.numel()


def autocast_active(x: Tensor) -> bool:
    return torch.is_autocast_enabled(x.device.type)


#: how a convolution reads its input: "by_shape" (the default of gensynth's layers) = NHWC when the map is large for
#: its channel count (:func:`prefers_channels_last`), NCHW otherwise, and a CPU call that is bound by its weight
#: runs as matrix products over the unfolded input (:func:`gensynth.nn.gemm_conv.prefers_gemm`), as does a 1x1
#: call (:mod:`gensynth.nn.pointwise_conv`); "keep" = as it comes, through the plain PyTorch convolution
InputLayout = Literal["keep", "by_shape"]

#: with ``input_layout="by_shape"``, a convolution reads a channels-last (NHWC) input when its output has at least
#: this many positions (B*H'*W') per input channel, and a contiguous (NCHW) one otherwise. Chosen by measurement on a
#: 2-core AMX CPU, 3x3 convolutions C -> C, forward + backward, NCHW time / NHWC time (benchmarks/README.md):
#: positions/channel 1-4: 0.57-1.00 in fp32 and bf16 (NHWC slower for the weight-heavy 512-1024-channel maps);
#: 8: 1.01 / 1.11 (fp32 / bf16); 16: 1.16 / 1.23; 32-64: 1.05-1.10 / 1.50-1.58.
CHANNELS_LAST_POSITIONS_PER_CHANNEL = 8.0


def prefers_channels_last(weight: Tensor, output_numel: int) -> bool:
    """True when a convolution with ``weight`` (O, I/groups, kh, kw) and ``output_numel`` output elements has a map
    large enough for its input channels that it runs faster on an NHWC input."""
    positions = output_numel / weight.shape[0]
    return positions >= CHANNELS_LAST_POSITIONS_PER_CHANNEL * weight.shape[1]


def arrange_input(x: Tensor, weight: Tensor, output_numel: int, layout: InputLayout) -> Tensor:
    """``x`` (B, C, H, W) in the memory format a convolution with ``weight`` should read (same values).

    "by_shape" applies :func:`prefers_channels_last`, and only to weights stored NCHW: a model converted to NHWC as a
    whole (``trainer.channels_last = true``) is left as it is."""
    if layout == "keep" or x.dim() != 4 or not weight.is_contiguous():
        return x
    fmt = torch.channels_last if prefers_channels_last(weight, output_numel) else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


def set_input_layout(module: nn.Module, layout: InputLayout) -> int:
    """Set ``input_layout`` on every convolution of ``module`` that has one (:class:`Conv2d`, ``SpectralConv2d``);
    returns how many. Results are unchanged up to rounding: the memory format only changes the summation order."""
    if layout not in ("keep", "by_shape"):
        raise ValueError(f"input_layout must be 'keep' or 'by_shape', got {layout!r}")
    count = 0
    for m in module.modules():
        if hasattr(type(m), "input_layout"):
            m.input_layout = layout
            count += 1
    return count


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and keys) that runs in fp32 under autocast when it is weight-bound
    (:func:`autocast_keeps_fp32`) and, with ``input_layout = "by_shape"``, reads its input in the memory format
    its shape runs fastest in (:func:`arrange_input`), or as matrix products when the weight bounds it on the CPU
    (:func:`gensynth.nn.gemm_conv.prefers_matrix_products`: weight-bound or 1x1)."""

    #: "by_shape" (default) or "keep" (plain ``nn.Conv2d``); the trainer sets it from ``trainer.channels_last``
    input_layout: InputLayout = "by_shape"
    #: matrix-product calls write the weight gradient into memory kept from the previous backward
    #: (:mod:`gensynth.nn.grad_buffer`); False = fresh memory every backward
    recycle_weight_grad: bool = True

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.padding, str) or (self.input_layout == "keep" and not autocast_active(x)):
            return super().forward(x)
        n = conv_output_numel(x, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation)
        x = arrange_input(x, self.weight, n, self.input_layout)
        if not (autocast_active(x) and autocast_keeps_fp32(x, self.weight, n)):
            return self._conv(x, n)
        with torch.autocast(x.device.type, enabled=False):
            return self._conv(x.float(), n)

    def _conv(self, x: Tensor, output_numel: int) -> Tensor:
        if (self.input_layout == "by_shape" and self.padding_mode == "zeros"
                and prefers_matrix_products(x, self.weight, output_numel, self.stride, self.padding, self.groups)):
            return gemm_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                               layer_gradient_buffer(self))
        return super().forward(x)
