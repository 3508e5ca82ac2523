"""The OASIS generator: SPADE residual blocks fed with one-hot labels and 3D noise.

Module names reproduce the official state-dict keys (``fc``, ``body.{i}.conv_0`` ..., ``conv_img``), so
official checkpoints load with an identity key mapping (see :mod:`gensynth_oasis.importer`).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from gensynth.errors import ConfigError
from gensynth.interfaces import Condition, Generator, GeneratorOutput, NoiseKind, as_condition
from gensynth.nn.conv import Conv2d
from gensynth.nn.label_conv import SegInput, seg_conv2d
from gensynth.nn.resample import UpsampleNearest
from gensynth.nn.spade import SPADEResBlock, init_xavier, resize_seg

# width multipliers of the official 6-block generator, input side first (times ``channels``)
OFFICIAL_MULTIPLIERS = (16, 16, 16, 8, 4, 2, 1)


class OASISGeneratorOptions(BaseModel):
    """Options of the ``oasis`` generator (defaults: the official code)."""

    model_config = ConfigDict(extra="forbid")

    channels: int = Field(64, ge=1, description="base width (official --channels_G); widths 16c,16c,16c,8c,4c,2c,c")
    num_res_blocks: int = Field(6, ge=1, le=10, description="SPADE residual blocks (official --num_res_blocks)")
    z_dim: int = Field(64, ge=1, description="noise channels (official --z_dim)")
    use_3d_noise: bool = Field(True, description="concatenate noise in front of the labels (official 3D noise)")
    norm: Literal["batch", "syncbatch", "instance"] = Field(
        "syncbatch", description="param-free norm in SPADE; 'syncbatch' = BatchNorm converted by the trainer on multi-GPU")
    spade_ks: int = Field(3, ge=1, description="SPADE conv kernel size (odd)")
    spectral: bool = Field(True, description="spectral norm on the residual-block convs")
    spade_hidden: int = Field(128, ge=1, description="SPADE shared conv width")


def generator_widths(channels: int, num_res_blocks: int) -> list[int]:
    """Feature widths before each block and after the last: ``num_res_blocks + 1`` numbers.

    6 blocks: the official [16c, 16c, 16c, 8c, 4c, 2c, c]; fewer blocks keep the tail of that list,
    more blocks prepend 16c.
    """
    mults = list(OFFICIAL_MULTIPLIERS)
    while len(mults) < num_res_blocks + 1:
        mults.insert(0, 16)
    mults = mults[len(mults) - (num_res_blocks + 1):]
    return [m * channels for m in mults]


class OASISGenerator(Generator):
    """OASIS generator (Schönfeld et al., ICLR 2021).

    forward(cond, z): labels (B, N, H, W) one-hot; z (B, z_dim) broadcast over the pixels, or
    (B, z_dim, h, w) spatial noise (resized nearest to H, W), or None (sampled N(0, I)).
    The network input is ``[z ; labels]`` (noise channels first, as in the official checkpoints).
    Returns GeneratorOutput(image (B, 3, H, W) in [-1, 1]).
    """

    noise = NoiseKind.SPATIAL

    def __init__(self, num_classes: int, options: OASISGeneratorOptions | None = None):
        super().__init__()
        opt = options or OASISGeneratorOptions()
        if opt.spade_ks % 2 != 1:
            raise ConfigError(f"model.generator_options.spade_ks must be odd, got {opt.spade_ks}")
        self.options = opt
        self.num_classes = int(num_classes)
        self.use_3d_noise = opt.use_3d_noise
        self.z_dim = opt.z_dim if opt.use_3d_noise else 0
        if not opt.use_3d_noise:
            self.noise = NoiseKind.NONE
        self.num_res_blocks = opt.num_res_blocks
        #: use ``cond.ids`` to convolve the factored [noise ; one-hot] map (same function, no zero products)
        self.factored_labels = True
        self.wants_sync_bn = opt.norm == "syncbatch"
        self.widths = generator_widths(opt.channels, opt.num_res_blocks)
        in_nc = self.num_classes + self.z_dim
        self.fc = Conv2d(in_nc, self.widths[0], 3, padding=1)  # nn.Conv2d, fp32 when weight-bound
        self.body = nn.ModuleList(
            SPADEResBlock(self.widths[i], self.widths[i + 1], in_nc, spectral=opt.spectral, norm=opt.norm,
                          hidden=opt.spade_hidden, kernel_size=opt.spade_ks)
            for i in range(opt.num_res_blocks))
        self.conv_img = Conv2d(self.widths[-1], 3, 3, padding=1)
        self.up = UpsampleNearest(2)  # no parameters: the official keys are unchanged
        init_xavier(self)

    # ------------------------------------------------------------------------------------------
    def start_size(self, height: int, width: int) -> tuple[int, int]:
        """(h0, w0) = label size / 2**(num_res_blocks - 1); raises ConfigError unless it divides."""
        f = 2 ** (self.num_res_blocks - 1)
        if height % f or width % f:
            raise ConfigError(
                f"the oasis generator with num_res_blocks={self.num_res_blocks} needs label maps whose height and "
                f"width are multiples of {f}, got {height}x{width}; change data.size or "
                f"model.generator_options.num_res_blocks")
        return height // f, width // f

    def noise_map(self, z: Tensor | None, batch: int, size: tuple[int, int], like: Tensor) -> Tensor | None:
        """z (B, z_dim) | (B, z_dim, h, w) | None -> (B, z_dim, H, W) on like's device/dtype (None w/o noise)."""
        if not self.use_3d_noise:
            if z is not None:
                raise ValueError("this oasis generator was built with use_3d_noise=False and takes no z")
            return None
        if z is None:
            z = torch.randn(batch, self.z_dim, device=like.device, dtype=like.dtype)
        if z.shape[0] != batch or z.shape[1] != self.z_dim or z.dim() not in (2, 4):
            raise ValueError(f"z must be ({batch}, {self.z_dim}) or ({batch}, {self.z_dim}, H, W), "
                             f"got {tuple(z.shape)}")
        z = z.to(device=like.device, dtype=like.dtype)
        if z.dim() == 2:
            return z[:, :, None, None].expand(batch, self.z_dim, *size)
        if tuple(z.shape[-2:]) != tuple(size):
            z = F.interpolate(z, size=size, mode="nearest")
        return z

    def forward(self, cond: Condition | Tensor, z: Tensor | None = None) -> GeneratorOutput:
        cond = as_condition(cond)
        labels = cond.labels
        if labels.shape[1] != self.num_classes:
            raise ValueError(f"the oasis generator was built for {self.num_classes} classes, "
                             f"got labels with {labels.shape[1]} channels")
        labels = labels.to(self.fc.weight.dtype) if labels.dtype != self.fc.weight.dtype else labels
        b, _, h, w = labels.shape
        h0, w0 = self.start_size(h, w)
        if cond.ids is not None and self.factored_labels:
            seg = SegInput(cond.ids, self.num_classes, self.noise_vector(z, b, (h, w), labels))
        else:
            zmap = self.noise_map(z, b, (h, w), labels)
            seg = labels if zmap is None else torch.cat([zmap, labels], dim=1)
        segs = label_pyramid(seg, len(self.body))  # segs[i]: the labels at block i's resolution
        x = seg_conv2d(self.fc, segs[0]) if isinstance(seg, SegInput) else self.fc(segs[0])
        last = len(self.body) - 1
        for i, block in enumerate(self.body):
            x = block(x, segs[i])
            if i < last:
                x = self.up(x)
        image = torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))
        return GeneratorOutput(image=image)

    def noise_vector(self, z: Tensor | None, batch: int, size: tuple[int, int], like: Tensor) -> Tensor | None:
        """The noise of a factored label map: (B, z_dim) as given or sampled (the same draws as
        :meth:`noise_map`), or spatial noise (B, z_dim, H, W) resized to ``size``; None without 3D noise."""
        if not self.use_3d_noise or (z is not None and z.dim() == 4):
            return self.noise_map(z, batch, size, like)
        if z is None:
            z = torch.randn(batch, self.z_dim, device=like.device, dtype=like.dtype)
        if z.shape != (batch, self.z_dim):
            raise ValueError(f"z must be ({batch}, {self.z_dim}) or ({batch}, {self.z_dim}, H, W), "
                             f"got {tuple(z.shape)}")
        return z.to(device=like.device, dtype=like.dtype)


def label_pyramid(seg: Tensor | SegInput, levels: int) -> list[Tensor | SegInput]:
    """[seg / 2**(levels-1), ..., seg / 2, seg]: nearest downsampling by 2, each level from the next larger one.

    seg: (B, C, H, W) (or a factored SegInput) with H and W divisible by 2**(levels-1). Nearest resizing by exact
    powers of two picks pixel (2**k * i, 2**k * j), so chaining gives the same numbers as resizing the full map
    each time, reading less."""
    out = [seg]
    for _ in range(levels - 1):
        h, w = out[-1].shape[-2:]
        out.append(resize_seg(out[-1], (h // 2, w // 2)))
    return out[::-1]


def build_oasis_generator(num_classes: int, **options) -> OASISGenerator:
    """Factory registered as ``oasis``: ``build_oasis_generator(num_classes=N, **OASISGeneratorOptions)``."""
    return OASISGenerator(num_classes, OASISGeneratorOptions(**options))
