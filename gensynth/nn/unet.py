"""Building blocks of U-Net decoders over a backbone's features (the timm U-Net and DP-SIMS discriminators)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensynth.nn.spade import maybe_sn


class ResidualConvBlock(nn.Module):
    """OASIS-style D residual block: LReLU -> conv3x3 -> LReLU -> conv3x3, plus a 1x1 shortcut when widths differ.

    (B, c_in, h, w) -> (B, c_out, h, w); spectral norm on every conv when ``spectral``.
    """

    def __init__(self, c_in: int, c_out: int, spectral: bool = True):
        super().__init__()
        self.conv1 = maybe_sn(nn.Conv2d(c_in, c_out, 3, padding=1), spectral)
        self.conv2 = maybe_sn(nn.Conv2d(c_out, c_out, 3, padding=1), spectral)
        self.shortcut = maybe_sn(nn.Conv2d(c_in, c_out, 1), spectral) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        dx = self.conv1(F.leaky_relu(x, 0.2))
        dx = self.conv2(F.leaky_relu(dx, 0.2))
        return self.shortcut(x) + dx


class SkipUpBlock(nn.Module):
    """Upsample the coarser decoder state to the skip's size, concatenate the skip, fuse.

    x: (B, c_x, h, w); skip: (B, c_skip, H', W') with H' >= h -> (B, c_out, H', W'). Sizes need not be exact
    multiples (backbones round odd sizes differently): ``interpolate`` to the skip's size, bilinear.
    """

    def __init__(self, c_x: int, c_skip: int, c_out: int, spectral: bool = True):
        super().__init__()
        self.block = ResidualConvBlock(c_x + c_skip, c_out, spectral)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        if x.shape[-2:] != skip.shape[-2:]:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(torch.cat([skip, x], dim=1))
