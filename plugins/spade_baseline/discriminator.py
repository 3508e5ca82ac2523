"""SPADE's multi-scale PatchGAN discriminator (pix2pixHD/SPADE ``MultiscaleDiscriminator``), from the facts.

Input: the one-hot labels (B, N, H, W), then the instance edge map (B, 1, H, W) when used, then the image
(B, 3, H, W), concatenated along channels in that order. Each scale is an ``NLayerDiscriminator``: kernel 4,
padding 2; layer 0 conv(in -> ndf, stride 2) + LeakyReLU(0.2) without norm; layers 1..n_layers-1 double the
width (max 512), stride 2 except the last (stride 1), spectral norm + InstanceNorm (no affine, no conv bias)
+ LeakyReLU(0.2); a final conv(-> 1, stride 1). Between scales the input is average-pooled (kernel 3,
stride 2, padding 1, count_include_pad=False).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from gensynth.interfaces import Condition, Discriminator, DiscriminatorOutput, DOutputKind, as_condition
from gensynth.nn.spade import init_xavier

from gensynth.nn.vae import norm_conv


class PatchGANOptions(BaseModel):
    """Options of the ``patchgan`` discriminators (model.discriminator_options)."""

    model_config = ConfigDict(extra="forbid")

    ndf: int = Field(64, ge=1, description="width of the first layer (doubled per layer up to 512)")
    n_layers: int = Field(4, ge=1, description="convolutions before the final prediction conv")
    num_D: int = Field(2, ge=1, description="number of scales (each half the resolution of the previous)")
    use_instance_edges: bool = Field(False, description="concatenate the instance edge map after the labels")
    norm: Literal["instance", "none"] = Field("instance", description="parameter-free norm of layers 1..n-1")
    spectral: bool = Field(True, description="spectral norm on layers 1..n-1")
    init_gain: float = Field(0.02, gt=0, description="xavier_normal gain (SPADE's init_variance)")


class NLayerDiscriminator(nn.Module):
    """One PatchGAN scale: x (B, C_in, H, W) -> list of n_layers + 1 outputs, the last the (B, 1, h, w) logits."""

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 4, norm: str = "instance",
                 spectral: bool = True):
        super().__init__()
        kw, pw = 4, 2
        nf = ndf
        blocks: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, nf, kw, stride=2, padding=pw),
                                                 nn.LeakyReLU(0.2))]
        for n in range(1, n_layers):
            prev, nf = nf, min(nf * 2, 512)
            stride = 1 if n == n_layers - 1 else 2
            blocks.append(nn.Sequential(norm_conv(prev, nf, kw, stride, pw, spectral, norm), nn.LeakyReLU(0.2)))
        blocks.append(nn.Sequential(nn.Conv2d(nf, 1, kw, stride=1, padding=pw)))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs


class PatchGANDiscriminator(Discriminator):
    """Multi-scale PatchGAN on labels (+ edges) concatenated before the image.

    Returns DiscriminatorOutput(kind=PATCH, logits=[(B, 1, h_s, w_s) per scale],
    features=[per scale: the n_layers intermediate maps, the final prediction excluded]).
    """

    output_kind = DOutputKind.PATCH
    provides_features = True
    takes_labels = True
    joint_real_fake = True

    def __init__(self, num_classes: int, ndf: int = 64, n_layers: int = 4, num_D: int = 2,
                 use_instance_edges: bool = False, norm: str = "instance", spectral: bool = True,
                 init_gain: float = 0.02):
        super().__init__()
        self.num_classes = num_classes
        self.use_instance_edges = use_instance_edges
        in_channels = num_classes + (1 if use_instance_edges else 0) + 3
        self.scales = nn.ModuleList(NLayerDiscriminator(in_channels, ndf, n_layers, norm, spectral)
                                    for _ in range(num_D))
        init_xavier(self, gain=init_gain)

    def inputs(self, image: Tensor, cond: Condition) -> Tensor:
        """(B, N [+1] + 3, H, W): labels, instance edges when used, then the image."""
        parts = [cond.labels.to(image.dtype)]
        if cond.labels.shape[1] != self.num_classes:
            raise ValueError(f"the PatchGAN discriminator was built for {self.num_classes} label channels, "
                             f"got labels of shape {tuple(cond.labels.shape)}")
        if self.use_instance_edges:
            if cond.instance_edges is None:
                raise ValueError("this PatchGAN uses instance edges (use_instance_edges=true) but the Condition "
                                 "has none: the dataset needs instance maps, or set use_instance_edges=false")
            parts.append(cond.instance_edges.to(image.dtype))
        parts.append(image)
        return torch.cat(parts, dim=1)

    def forward(self, image: Tensor, cond: Condition | Tensor | None = None) -> DiscriminatorOutput:
        """image: (B, 3, H, W) in [-1, 1]; cond: the Condition (required: this D reads the labels)."""
        if cond is None:
            raise ValueError("the PatchGAN discriminator needs the Condition (labels are concatenated to the image)")
        x = self.inputs(image, as_condition(cond))
        logits, features = [], []
        for i, scale in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)
            outs = scale(x)
            logits.append(outs[-1])
            features.append(outs[:-1])
        return DiscriminatorOutput(kind=DOutputKind.PATCH, logits=logits, features=features)


def build_patchgan(num_classes: int, **options) -> PatchGANDiscriminator:
    """Factory registered as ``patchgan`` (multi-scale, 2 scales by default)."""
    opts = PatchGANOptions.model_validate(options).model_dump()
    return PatchGANDiscriminator(num_classes=num_classes, **opts)


class PatchGANSingleOptions(PatchGANOptions):
    num_D: int = Field(1, ge=1, description="number of scales (1: single-scale PatchGAN)")


def build_patchgan_single(num_classes: int, **options) -> PatchGANDiscriminator:
    """Factory registered as ``patchgan-single`` (one scale)."""
    opts = PatchGANSingleOptions.model_validate(options).model_dump()
    return PatchGANDiscriminator(num_classes=num_classes, **opts)
