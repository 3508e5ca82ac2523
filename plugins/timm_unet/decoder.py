"""Building blocks of the timm-unet decoder: feature conditioning and upsampling conv blocks.

Feature conditioning: DP-SIMS reports that raw backbone features are ill-conditioned (a few channels
dominate in magnitude) and re-scales every feature map before its decoder; the exact form it uses
(a sigmoid appears in summaries) is UNVERIFIED. gensynth standardises each map (per channel over
space, or per pixel over channels) and follows it with a learned 1x1 projection.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensynth.nn.spade import maybe_sn


def standardise(x: Tensor, mode: str, eps: float = 1e-5) -> Tensor:
    """x: (B, C, h, w) -> same shape, without learned parameters.

    'channel': each channel of each image to zero mean, unit variance over its h*w positions (a
    GroupNorm with one channel per group); 'layer': each pixel's C-vector to zero mean, unit variance;
    'none': unchanged. Statistics are computed in float32 for mixed precision.
    """
    if mode == "none":
        return x
    dims = (2, 3) if mode == "channel" else (1,)
    xf = x.float()
    mean = xf.mean(dim=dims, keepdim=True)
    var = xf.var(dim=dims, keepdim=True, unbiased=False)
    return ((xf - mean) * torch.rsqrt(var + eps)).to(x.dtype)


class FeatureConditioner(nn.Module):
    """Standardise one backbone feature map, then project it: (B, C_in, h, w) -> (B, C_out, h, w)."""

    def __init__(self, c_in: int, c_out: int, mode: str = "channel", spectral: bool = True):
        super().__init__()
        if mode not in ("channel", "layer", "none"):
            raise ValueError(f"feature_norm must be 'channel', 'layer' or 'none', got {mode!r}")
        self.mode = mode
        self.proj = maybe_sn(nn.Conv2d(c_in, c_out, 1), spectral)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(standardise(x, self.mode))


class ConvBlock(nn.Module):
    """Residual block: LReLU -> conv3x3 -> LReLU -> conv3x3, plus a 1x1 shortcut when widths differ.

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


class UpStage(nn.Module):
    """Upsample the coarser decoder state to the skip's size, concatenate, fuse.

    x: (B, c_x, h, w); skip: (B, c_skip, H', W') with H' >= h -> (B, c_out, H', W').
    Sizes need not be exact multiples (backbones round odd sizes differently): ``interpolate`` to the
    skip's size, bilinear.
    """

    def __init__(self, c_x: int, c_skip: int, c_out: int, spectral: bool = True):
        super().__init__()
        self.block = ConvBlock(c_x + c_skip, c_out, spectral)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        if x.shape[-2:] != skip.shape[-2:]:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(torch.cat([skip, x], dim=1))
