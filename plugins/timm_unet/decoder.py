"""Building blocks of the timm-unet decoder: feature conditioning and upsampling conv blocks.

Feature conditioning: DP-SIMS reports that raw backbone features are ill-conditioned (a few channels
dominate in magnitude) and re-scales every feature map before its decoder; the exact form it uses
(a sigmoid appears in summaries) is UNVERIFIED. gensynth standardises each map (per channel over
space, or per pixel over channels) and follows it with a learned 1x1 projection.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from gensynth.nn.spade import maybe_sn
from gensynth.nn.unet import ResidualConvBlock, SkipUpBlock


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


# the residual block and the skip-joining up-block live in the core (shared with the DP-SIMS discriminator)
ConvBlock = ResidualConvBlock
UpStage = SkipUpBlock
