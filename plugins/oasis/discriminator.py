"""The OASIS discriminator: a U-Net of residual blocks that segments images into N+1 classes.

Output logits (B, N+1, H, W) at full resolution: channel 0 = "fake", channel c+1 = semantic class c.
Module names reproduce the official state-dict keys (``body_down.{i}.conv1.*``, ``body_up.{i}.conv2.1.*``,
``layer_up_last``). :class:`ResidualBlockD`, :class:`UNetEncoder`-style helpers and :func:`discriminator_widths`
are public so that the U-Net ablations (``gensynth_oasis.ablations``) reuse them.
"""
from __future__ import annotations

from typing import Optional

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from gensynth.errors import ConfigError
from gensynth.interfaces import Condition, Discriminator, DiscriminatorOutput, DOutputKind
from gensynth.nn.conv import Conv2d
from gensynth.nn.resample import UpsampleNearest
from gensynth.nn.spade import init_xavier, maybe_sn

OFFICIAL_D_CHANNELS = (3, 128, 128, 256, 256, 512, 512)
OFFICIAL_D_LAST = 64


class OASISDiscriminatorOptions(BaseModel):
    """Options of ``oasis-unet`` (defaults: the official hard-coded widths)."""

    model_config = ConfigDict(extra="forbid")

    num_res_blocks: int = Field(6, ge=2, le=10, description="U-Net levels (encoder blocks = decoder blocks)")
    channels: Optional[list[int]] = Field(
        None, description="encoder widths, image channels first; default the official [3,128,128,256,256,512,512]")
    width: float = Field(1.0, gt=0, description="multiplier on every width but the image's (tiny test models)")
    last_channels: Optional[int] = Field(None, ge=1, description="width of the last decoder block (default 64*width)")
    spectral: bool = Field(True, description="spectral norm on every conv but the last 1x1")


def discriminator_widths(num_res_blocks: int = 6, channels: list[int] | None = None, width: float = 1.0,
                         last_channels: int | None = None) -> tuple[list[int], int]:
    """(encoder widths of length num_res_blocks+1 starting with 3, last decoder width)."""
    chans = list(channels) if channels is not None else list(OFFICIAL_D_CHANNELS)
    while channels is None and len(chans) < num_res_blocks + 1:
        chans.append(chans[-1])
    if len(chans) < num_res_blocks + 1:
        raise ConfigError(f"model.discriminator_options.channels has {len(chans)} entries; num_res_blocks="
                          f"{num_res_blocks} needs {num_res_blocks + 1} (the image's 3 first)")
    chans = chans[:num_res_blocks + 1]
    if chans[0] != 3:
        raise ConfigError(f"model.discriminator_options.channels must start with 3 (RGB), got {chans[0]}")
    chans = [3] + [max(1, int(round(c * width))) for c in chans[1:]]
    last = last_channels if last_channels is not None else max(1, int(round(OFFICIAL_D_LAST * width)))
    return chans, last


class ResidualBlockD(nn.Module):
    """Residual block of the OASIS discriminator.

    up_or_down: -1 halves the resolution (average pooling after the convs), +1 doubles it (nearest
    upsampling before the first conv). first: the very first encoder block (no activation before its conv,
    pooling before the shortcut conv). x (B, fin, H, W) -> (B, fout, H/2, W/2) or (B, fout, 2H, 2W).

    Layout (official keys): conv1 = [LeakyReLU] [Upsample] SN conv3x3; conv2 = LeakyReLU, SN conv3x3;
    conv_s = SN conv1x1 with bias, only when fin != fout.
    """

    def __init__(self, fin: int, fout: int, up_or_down: int, first: bool = False, spectral: bool = True):
        super().__init__()
        if up_or_down not in (-1, 1):
            raise ValueError(f"up_or_down must be -1 (down) or +1 (up), got {up_or_down}")
        self.up_or_down = up_or_down
        self.first = first
        self.learned_shortcut = fin != fout
        conv1: list[nn.Module] = []
        if not first:
            conv1.append(nn.LeakyReLU(0.2))
        if up_or_down > 0:
            conv1.append(UpsampleNearest(2))
        conv1.append(maybe_sn(nn.Conv2d(fin, fout, 3, padding=1), spectral))
        self.conv1 = nn.Sequential(*conv1)
        self.conv2 = nn.Sequential(nn.LeakyReLU(0.2), maybe_sn(nn.Conv2d(fout, fout, 3, padding=1), spectral))
        if self.learned_shortcut:
            self.conv_s = maybe_sn(nn.Conv2d(fin, fout, 1), spectral)
        self.sampling = nn.AvgPool2d(2) if up_or_down < 0 else UpsampleNearest(2)

    def shortcut(self, x: Tensor) -> Tensor:
        if self.first:
            x = self.sampling(x)
            return self.conv_s(x) if self.learned_shortcut else x
        if self.up_or_down > 0:
            x = self.sampling(x)
        if self.learned_shortcut:
            x = self.conv_s(x)
        if self.up_or_down < 0:
            x = self.sampling(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        dx = self.conv2(self.conv1(x))
        if self.up_or_down < 0:
            dx = self.sampling(dx)
        return self.shortcut(x) + dx


def build_encoder(chans: list[int], spectral: bool = True) -> nn.ModuleList:
    """``body_down``: len(chans)-1 down blocks chans[i] -> chans[i+1] (the first one ``first``)."""
    return nn.ModuleList(ResidualBlockD(chans[i], chans[i + 1], -1, first=(i == 0), spectral=spectral)
                         for i in range(len(chans) - 1))


def build_decoder(chans: list[int], last: int, spectral: bool = True) -> nn.ModuleList:
    """``body_up``: up0 on the bottleneck, then blocks taking cat(skip, x) (2x widths), ending at ``last``."""
    n = len(chans) - 1
    blocks = [ResidualBlockD(chans[n], chans[n - 1], 1, spectral=spectral)]
    for i in range(1, n - 1):
        blocks.append(ResidualBlockD(2 * chans[n - i], chans[n - 1 - i], 1, spectral=spectral))
    blocks.append(ResidualBlockD(2 * chans[1], last, 1, spectral=spectral))
    return nn.ModuleList(blocks)


def unet_features(body_down: nn.ModuleList, body_up: nn.ModuleList, image: Tensor) -> Tensor:
    """Run the U-Net: image (B, 3, H, W) -> decoder features (B, last, H, W).

    The decoder block i >= 1 reads ``cat(encoder_out[-i-1], x)`` (skip first, as the official code)."""
    feats = []
    x = image
    for block in body_down:
        x = block(x)
        feats.append(x)
    x = body_up[0](x)
    for i in range(1, len(body_up)):
        x = body_up[i](torch.cat([feats[-i - 1], x], dim=1))
    return x


def check_divisible(height: int, width: int, levels: int) -> None:
    f = 2 ** levels
    if height % f or width % f:
        raise ConfigError(f"the oasis U-Net discriminator with num_res_blocks={levels} needs images whose height and "
                          f"width are multiples of {f}, got {height}x{width}; change data.size or "
                          f"model.discriminator_options.num_res_blocks")


class UNetDiscriminatorBase(Discriminator):
    """The OASIS U-Net body shared by ``oasis-unet`` and its ablation variants.

    ``extra_inputs`` channels are concatenated to the image by the subclass (labels for input concatenation);
    ``out_channels`` is the width of the last 1x1 layer (``layer_up_last``, no spectral norm).
    ``unet(x)``: x (B, 3+extra, H, W) -> decoder features (B, last_channels, H, W).
    Subclasses call :func:`gensynth.nn.spade.init_xavier` once all their modules exist.
    No normalisation layers: samples are independent, so the D step's three calls may be merged into one.
    """

    batch_independent = True

    def __init__(self, num_classes: int, options: OASISDiscriminatorOptions, *, out_channels: int,
                 extra_inputs: int = 0):
        super().__init__()
        self.options = options
        self.num_classes = int(num_classes)
        chans, self.last_channels = discriminator_widths(options.num_res_blocks, options.channels, options.width,
                                                         options.last_channels)
        self.channels = [3 + extra_inputs] + chans[1:]
        self.num_res_blocks = options.num_res_blocks
        self.body_down = build_encoder(self.channels, options.spectral)
        self.body_up = build_decoder(self.channels, self.last_channels, options.spectral)
        self.layer_up_last = Conv2d(self.last_channels, out_channels, 1)

    def unet(self, x: Tensor) -> Tensor:
        check_divisible(x.shape[-2], x.shape[-1], self.num_res_blocks)
        return unet_features(self.body_down, self.body_up, x)


class OASISDiscriminator(UNetDiscriminatorBase):
    """The OASIS U-Net discriminator: image (B, 3, H, W) -> logits (B, N+1, H, W) (channel 0 = fake).

    Reads only the image (``takes_labels`` False): it learns the classes itself.
    """

    output_kind = DOutputKind.PIXEL_CLASSES
    takes_labels = False

    def __init__(self, num_classes: int, options: OASISDiscriminatorOptions | None = None):
        super().__init__(num_classes, options or OASISDiscriminatorOptions(), out_channels=int(num_classes) + 1)
        init_xavier(self)

    def forward(self, image: Tensor, cond: Condition | None = None) -> DiscriminatorOutput:
        return DiscriminatorOutput(DOutputKind.PIXEL_CLASSES, self.layer_up_last(self.unet(image)))


def build_oasis_discriminator(num_classes: int, **options) -> OASISDiscriminator:
    """Factory registered as ``oasis-unet``: ``build_oasis_discriminator(num_classes=N, **OASISDiscriminatorOptions)``."""
    return OASISDiscriminator(num_classes, OASISDiscriminatorOptions(**options))
