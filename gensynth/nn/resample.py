"""Nearest-neighbour upsampling that reads its input in the memory format the CPU kernel is fast on.

PyTorch's CPU kernel for ``F.interpolate(mode="nearest")`` is 10-30x slower on an NCHW input than on an NHWC
(channels-last) one: one thread, 2x upsampling of (3, 256, 32, 32) took 29 ms from NCHW against 0.9 ms from NHWC,
plus 2 ms to convert the input (benchmarks/README.md). Nearest upsampling copies values, so the result is the same
whichever layout is read; only the output's memory format differs (NHWC here), and the convolutions after it
choose their own input layout (:func:`gensynth.nn.conv.arrange_input`). Like those convolutions,
:class:`UpsampleNearest` follows ``trainer.channels_last``: with ``input_layout = "keep"`` (NCHW throughout,
``gensynth.nn.conv.set_input_layout``) it upsamples the input as it comes, so the layers after it keep reading
NCHW.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensynth.nn.conv import InputLayout


def upsample_nearest(x: Tensor, scale_factor: float = 2.0, layout: InputLayout = "by_shape") -> Tensor:
    """``F.interpolate(x, scale_factor=scale_factor, mode="nearest")``: x (B, C, H, W) -> (B, C, H*s, W*s), the same
    values, differentiable. With ``layout="by_shape"`` a CPU input is read channels-last (the output is
    channels-last too); ``"keep"`` upsamples the input as it comes."""
    if (layout == "by_shape" and x.dim() == 4 and x.device.type == "cpu"
            and not x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous(memory_format=torch.channels_last)
    return F.interpolate(x, scale_factor=scale_factor, mode="nearest")


class UpsampleNearest(nn.Module):
    """``nn.Upsample(scale_factor=s)`` (mode "nearest", no parameters or state) through :func:`upsample_nearest`."""

    #: "by_shape" (default: NHWC on the CPU) or "keep"; the trainer sets it from ``trainer.channels_last``
    input_layout: InputLayout = "by_shape"

    def __init__(self, scale_factor: float = 2.0):
        super().__init__()
        self.scale_factor = float(scale_factor)

    def forward(self, x: Tensor) -> Tensor:
        return upsample_nearest(x, self.scale_factor, self.input_layout)

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}, mode='nearest'"
