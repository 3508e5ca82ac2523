"""The discriminator's trainable parts: feature conditioning and the U-Net decoder blocks.

Feature conditioning (DP-SIMS: raw backbone features are ill-conditioned, a few channels dominate; the paper
conditions them with a step involving a sigmoid, whose exact form is UNPUBLISHED):

* ``standardise-sigmoid``: sigmoid((x - mean) / std) per image and channel, statistics over the positions: every
  channel bounded in (0, 1) with the same spread, no parameters, each image independent of the batch;
* ``layernorm``: each pixel's channel vector to zero mean, unit variance, with a learned affine (ConvNeXt's own
  channels-first LayerNorm);
* ``none``: the raw features.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensynth.nn.spade import maybe_sn
from gensynth.nn.unet import ResidualConvBlock, SkipUpBlock


def standardise_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """(B, C, h, w) -> sigmoid of each channel standardised over its h*w positions (float32 statistics)."""
    xf = x.float()
    mean = xf.mean(dim=(2, 3), keepdim=True)
    var = xf.var(dim=(2, 3), keepdim=True, unbiased=False)
    return torch.sigmoid((xf - mean) * torch.rsqrt(var + eps)).to(x.dtype)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, h, w) map, learned per-channel affine (weight 1, bias 0 at init)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class FeatureConditioner(nn.Module):
    """One backbone feature map, conditioned then projected by a learned 1x1 conv: (B, C_in, h, w) -> (B, C_out,
    h, w). ``conditioned(x)`` is the map before the projection (the features handed to feature losses)."""

    def __init__(self, c_in: int, c_out: int, mode: str, spectral: bool = True):
        super().__init__()
        if mode not in ("none", "standardise-sigmoid", "layernorm"):
            raise ValueError(f"feature_conditioning must be 'none', 'standardise-sigmoid' or 'layernorm', got {mode!r}")
        self.mode = mode
        self.norm = ChannelLayerNorm(c_in) if mode == "layernorm" else None
        self.proj = maybe_sn(nn.Conv2d(c_in, c_out, 1), spectral)

    def conditioned(self, x: Tensor) -> Tensor:
        if self.mode == "standardise-sigmoid":
            return standardise_sigmoid(x)
        if self.mode == "layernorm":
            return self.norm(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.conditioned(x))


# the residual block and the skip-joining up-block live in the core (shared with the timm U-Net discriminator)
ResBlock = ResidualConvBlock
UpBlock = SkipUpBlock
