"""``dp-sims`` generator: a label-map encoder modulating an image trunk, noise injected by cross-attention.

As the DP-SIMS figure caption describes it (widths, blocks and placements are UNPUBLISHED; these are gensynth's):

* a **semantic-map encoder** over the full-resolution one-hot map: level s (s = 0 .. L-1) at 1/2^s of the size,
  width min(e * 2^s, e_max), each a 2x average pooling of the level above followed by two 3x3 convolutions;
* **noise by cross-attention** (:class:`~gensynth_dpsims.attention.NoiseCrossAttention`) into the encoder's
  features at the chosen scales: K tokens from z attended by the label features there;
* an **image trunk** fed the **low-resolution label map** (its class fractions at the trunk's start size, 1/2^(L-1)
  of the label size), then L SPADE residual blocks whose normalisations are modulated (gamma, beta) by the encoder
  feature of their resolution, 2x nearest upsampling between blocks, a 3x3 conv and tanh.

Noise: ``z`` (B, z_dim) per image (sampled when None), or (B, z_dim, H, W) 3D noise (re-sampling a region's noise
changes that region: ``gensynth generate --resample-class``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensynth.errors import ConfigError
from gensynth.interfaces import Condition, Generator, GeneratorOutput, NoiseKind, as_condition
from gensynth.nn.conv import Conv2d
from gensynth.nn.resample import UpsampleNearest
from gensynth.nn.spade import SPADEResBlock, init_xavier
from gensynth_dpsims.attention import NoiseCrossAttention
from gensynth_dpsims.options import DPSIMSGeneratorOptions

#: trunk width multipliers of the 6-block generator, input side first (OASIS's generator widths)
TRUNK_MULTIPLIERS = (16, 16, 16, 8, 4, 2, 1)


def trunk_widths(channels: int, num_res_blocks: int) -> list[int]:
    """``num_res_blocks + 1`` widths: 6 blocks [16c, 16c, 16c, 8c, 4c, 2c, c]; fewer keep the tail, more prepend 16c."""
    mults = list(TRUNK_MULTIPLIERS)
    while len(mults) < num_res_blocks + 1:
        mults.insert(0, 16)
    return [m * channels for m in mults[len(mults) - (num_res_blocks + 1):]]


class EncoderLevel(nn.Module):
    """(B, c_in, h, w) -> (B, c_out, h / 2^down, w / 2^down): optional 2x average pooling, conv3x3, LReLU, conv3x3,
    LReLU, plus a 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, down: bool):
        super().__init__()
        self.down = down
        self.conv1 = Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.down:
            x = F.avg_pool2d(x, 2)
        h = F.leaky_relu(self.conv1(x), 0.2)
        return F.leaky_relu(self.shortcut(x) + self.conv2(h), 0.2)


class SemanticEncoder(nn.Module):
    """labels (B, N, H, W) -> [level 0 (B, e_0, H, W), ..., level L-1 (B, e_{L-1}, H/2^(L-1), W/2^(L-1))]."""

    def __init__(self, num_classes: int, levels: int, base: int, widest: int):
        super().__init__()
        self.widths = [min(base * 2 ** s, widest) for s in range(levels)]
        c_in = [num_classes] + self.widths[:-1]
        self.levels = nn.ModuleList(EncoderLevel(ci, co, down=s > 0) for s, (ci, co) in enumerate(zip(c_in, self.widths)))

    def forward(self, labels: Tensor) -> list[Tensor]:
        out, x = [], labels
        for level in self.levels:
            x = level(x)
            out.append(x)
        return out


class DPSIMSGenerator(Generator):
    """forward(cond, z) -> GeneratorOutput(image (B, 3, H, W) in [-1, 1], aux {"z": (B, z_dim)} when z was a vector
    or sampled). H and W must be multiples of 2^(num_res_blocks - 1)."""

    noise = NoiseKind.SPATIAL

    def __init__(self, num_classes: int, options: DPSIMSGeneratorOptions | None = None):
        super().__init__()
        opt = options or DPSIMSGeneratorOptions()
        self.options = opt
        self.num_classes = int(num_classes)
        self.z_dim = opt.z_dim
        self.num_res_blocks = opt.num_res_blocks
        self.wants_sync_bn = opt.norm == "syncbatch"
        levels = opt.num_res_blocks
        self.encoder = SemanticEncoder(self.num_classes, levels, opt.encoder_channels, opt.encoder_max_channels)
        available = [2 ** s for s in range(levels)]
        scales = opt.noise_scales if opt.noise_scales is not None else (available[1:] or available)
        bad = [s for s in scales if s not in available]
        if bad:
            raise ConfigError(f"model.generator_options.dp-sims.noise_scales = {opt.noise_scales}: with "
                              f"num_res_blocks={levels} the label features exist at scales {available}; "
                              f"{bad} is not one of them")
        if opt.token_dim % opt.heads:
            raise ConfigError(f"model.generator_options.dp-sims.token_dim ({opt.token_dim}) must be divisible by "
                              f"heads ({opt.heads})")
        self.noise_scales = sorted(set(scales))
        self.attention = nn.ModuleDict({
            str(s): NoiseCrossAttention(self.encoder.widths[s.bit_length() - 1], opt.z_dim, opt.noise_tokens,
                                        opt.token_dim, opt.heads)
            for s in self.noise_scales})
        self.widths = trunk_widths(opt.channels, levels)
        self.fc = Conv2d(self.num_classes, self.widths[0], 3, padding=1)
        # block i runs at 1/2^(L-1-i) of the size and is modulated by encoder level L-1-i
        self.body = nn.ModuleList(
            SPADEResBlock(self.widths[i], self.widths[i + 1], self.encoder.widths[levels - 1 - i],
                          spectral=opt.spectral, norm=opt.norm, hidden=opt.spade_hidden)
            for i in range(levels))
        self.conv_img = Conv2d(self.widths[-1], 3, 3, padding=1)
        self.up = UpsampleNearest(2)
        init_xavier(self)  # OASIS's initialisation (gain 0.02) for the encoder and trunk ...
        for module in self.attention.values():  # ... but not the attention: with it the noise starts ~1e-4 weak
            module.reset_parameters()

    def start_size(self, height: int, width: int) -> tuple[int, int]:
        f = 2 ** (self.num_res_blocks - 1)
        if height % f or width % f:
            raise ConfigError(f"the dp-sims generator with num_res_blocks={self.num_res_blocks} needs label maps whose "
                              f"height and width are multiples of {f}, got {height}x{width}; change data.size or "
                              f"model.generator_options.dp-sims.num_res_blocks")
        return height // f, width // f

    def _noise(self, z: Tensor | None, batch: int, like: Tensor) -> Tensor:
        if z is None:
            return torch.randn(batch, self.z_dim, device=like.device, dtype=like.dtype)
        if z.shape[0] != batch or z.dim() not in (2, 4) or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be ({batch}, {self.z_dim}) or ({batch}, {self.z_dim}, H, W), got "
                             f"{tuple(z.shape)}")
        return z.to(device=like.device, dtype=like.dtype)

    def lowres_labels(self, labels: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, N, H, W) -> (B, N, h0, w0): class fractions ('area') or nearest one-hot."""
        if self.options.lowres_labels == "area":
            return F.adaptive_avg_pool2d(labels, size)
        return F.interpolate(labels, size=size, mode="nearest")

    def forward(self, cond: Condition | Tensor, z: Tensor | None = None) -> GeneratorOutput:
        cond = as_condition(cond)
        labels = cond.labels
        if labels.shape[1] != self.num_classes:
            raise ValueError(f"the dp-sims generator was built for {self.num_classes} classes, got labels with "
                             f"{labels.shape[1]} channels")
        labels = labels.to(self.fc.weight.dtype)
        b, _, h, w = labels.shape
        size0 = self.start_size(h, w)
        z = self._noise(z, b, labels)
        feats = self.encoder(labels)
        for s in self.noise_scales:
            level = s.bit_length() - 1
            feats[level] = self.attention[str(s)](feats[level], z)
        x = self.fc(self.lowres_labels(labels, size0))
        last = len(self.body) - 1
        for i, block in enumerate(self.body):
            x = block(x, feats[last - i])
            if i < last:
                x = self.up(x)
        image = torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))
        return GeneratorOutput(image=image, aux={"z": z} if z.dim() == 2 else {})


def build_dpsims_generator(num_classes: int, **options) -> DPSIMSGenerator:
    """Factory registered as ``dp-sims``: ``build_dpsims_generator(num_classes=N, **DPSIMSGeneratorOptions)``."""
    return DPSIMSGenerator(num_classes, DPSIMSGeneratorOptions(**options))
