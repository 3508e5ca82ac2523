"""CC-FPSE's feature-pyramid semantics-embedding discriminator ``FPSEDiscriminator``, from the facts of xh-liu/CC-FPSE.

It reads the image only (B, 3, H, W); the labels enter through a projection at three scales. With nf = ndf:

* bottom-up: five 3x3 stride-2 convs (3 -> nf -> 2nf -> 4nf -> 8nf -> 8nf), each spectral-normed without bias,
  instance-normed (no affine) and LeakyReLU(0.2): ``enc1..enc5`` at 1/2 .. 1/32;
* top-down: 1x1 laterals (``lat2..lat5`` -> 4nf, same norm and activation), ``f5 = lat5(enc5)``,
  ``f_k = up2(f_{k+1}) + lat_k(enc_k)`` for k = 4, 3, 2 with bilinear upsampling (align_corners=False), no activation
  on the sum; ``final2/3/4`` (3x3, 4nf -> 2nf, same norm) on f2 (1/4), f3 (1/8) and f4 (1/16);
* heads shared over the scales, plain 1x1 convs with bias: ``tf`` (2nf -> 1, the real/fake logit), ``seg`` (2nf ->
  2nf, a semantic feature) and ``embedding`` (S -> 2nf on the full-resolution labels [+ edges], average-pooled 2x2
  twice, three and four times to reach 1/4, 1/8 and 1/16);
* score at each scale: ``tf(F) + sum_c embedding_c * seg(F)_c``, one (B, 1, h, w) map per scale.

Outputs: PATCH logits [1/4, 1/8, 1/16] and, for feature matching, the bottom-up features enc2..enc5 grouped by
the logit scales as [[enc2], [enc3], [enc4, enc5]] (the contract wants one feature list per logit scale; CC-FPSE's
own feature-matching term ``fpse-feature-matching`` averages over the four maps, as the official code).
Module names are the official ones, so official state dicts load by name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from gensynth.interfaces import Condition, Discriminator, DiscriminatorOutput, DOutputKind, as_condition
from gensynth.nn.spade import init_xavier
from gensynth.nn.vae import norm_conv


class FPSEOptions(BaseModel):
    """Options of the ``fpse`` discriminator (model.discriminator_options)."""

    model_config = ConfigDict(extra="forbid")

    ndf: int = Field(64, ge=1, description="width of the first layer (nf, 2nf, 4nf, 8nf, 8nf bottom-up)")
    use_instance_edges: bool = Field(False, description="append the instance edge map to the embedded labels")
    spectral: bool = Field(True, description="spectral norm on the bottom-up, lateral and final convs")
    init_gain: float = Field(0.02, gt=0, description="xavier_normal gain (the official init_variance)")


def sn_in_lrelu(fin: int, fout: int, kernel: int, stride: int, spectral: bool) -> nn.Sequential:
    """``Sequential(Sequential(sn(conv, no bias), InstanceNorm2d), LeakyReLU(0.2))`` (keys ``<name>.0.0.*``)."""
    return nn.Sequential(norm_conv(fin, fout, kernel, stride, kernel // 2, spectral, "instance"), nn.LeakyReLU(0.2))


class FPSEDiscriminator(Discriminator):
    """image (B, 3, H, W), labels (B, N, H, W) [+ edges] -> PATCH logits at 1/4, 1/8, 1/16 and features.

    H and W must be multiples of 32, with (H/32)(W/32) > 1 (instance norm at 1/32). Real and fake go through one call (``joint_real_fake``), as the official
    training step concatenates them."""

    output_kind = DOutputKind.PATCH
    provides_features = True
    takes_labels = True
    joint_real_fake = True

    def __init__(self, num_classes: int, ndf: int = 64, use_instance_edges: bool = False, spectral: bool = True,
                 init_gain: float = 0.02):
        super().__init__()
        self.num_classes = num_classes
        self.use_instance_edges = use_instance_edges
        nf = ndf
        label_nc = num_classes + (1 if use_instance_edges else 0)
        self.enc1 = sn_in_lrelu(3, nf, 3, 2, spectral)
        self.enc2 = sn_in_lrelu(nf, 2 * nf, 3, 2, spectral)
        self.enc3 = sn_in_lrelu(2 * nf, 4 * nf, 3, 2, spectral)
        self.enc4 = sn_in_lrelu(4 * nf, 8 * nf, 3, 2, spectral)
        self.enc5 = sn_in_lrelu(8 * nf, 8 * nf, 3, 2, spectral)
        self.lat2 = sn_in_lrelu(2 * nf, 4 * nf, 1, 1, spectral)
        self.lat3 = sn_in_lrelu(4 * nf, 4 * nf, 1, 1, spectral)
        self.lat4 = sn_in_lrelu(8 * nf, 4 * nf, 1, 1, spectral)
        self.lat5 = sn_in_lrelu(8 * nf, 4 * nf, 1, 1, spectral)
        self.final2 = sn_in_lrelu(4 * nf, 2 * nf, 3, 1, spectral)
        self.final3 = sn_in_lrelu(4 * nf, 2 * nf, 3, 1, spectral)
        self.final4 = sn_in_lrelu(4 * nf, 2 * nf, 3, 1, spectral)
        self.tf = nn.Conv2d(2 * nf, 1, 1)
        self.seg = nn.Conv2d(2 * nf, 2 * nf, 1)
        self.embedding = nn.Conv2d(label_nc, 2 * nf, 1)
        init_xavier(self, gain=init_gain)

    def label_input(self, cond: Condition, dtype: torch.dtype) -> Tensor:
        """(B, S, H, W): the one-hot labels, then the instance edge map when used."""
        if cond.labels.shape[1] != self.num_classes:
            raise ValueError(f"the fpse discriminator was built for {self.num_classes} label channels, got labels "
                             f"of shape {tuple(cond.labels.shape)}")
        parts = [cond.labels.to(dtype)]
        if self.use_instance_edges:
            if cond.instance_edges is None:
                raise ValueError("this fpse discriminator uses instance edges (use_instance_edges=true) but the "
                                 "Condition has none: the dataset needs instance maps, or set use_instance_edges=false")
            parts.append(cond.instance_edges.to(dtype))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    @staticmethod
    def _up(x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, image: Tensor, cond: Condition | Tensor | None = None) -> DiscriminatorOutput:
        """image: (B, 3, H, W) in [-1, 1]; cond: the Condition (required: the labels are embedded)."""
        if cond is None:
            raise ValueError("the fpse discriminator needs the Condition (its score embeds the labels)")
        cond = as_condition(cond)
        h, w = image.shape[-2:]
        if h % 32 or w % 32 or h * w < 2 * 32 * 32:
            raise ValueError(f"the fpse discriminator downsamples 5 times, so the image size must be a multiple of "
                             f"32 with more than one pixel left at 1/32 (instance norm), e.g. 64x64; got {h}x{w}")
        e1 = self.enc1(image)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        e4 = self.enc4(e3)
        e5 = self.enc5(e4)
        f5 = self.lat5(e5)
        f4 = self._up(f5) + self.lat4(e4)
        f3 = self._up(f4) + self.lat3(e3)
        f2 = self._up(f3) + self.lat2(e2)
        emb = self.embedding(self.label_input(cond, image.dtype))
        emb = F.avg_pool2d(F.avg_pool2d(emb, 2), 2)  # 1/4
        logits = []
        for final, feat in ((self.final2, f2), (self.final3, f3), (self.final4, f4)):
            if logits:
                emb = F.avg_pool2d(emb, 2)
            x = final(feat)
            logits.append(self.tf(x) + (emb * self.seg(x)).sum(dim=1, keepdim=True))
        return DiscriminatorOutput(kind=DOutputKind.PATCH, logits=logits, features=[[e2], [e3], [e4, e5]])


def build_fpse(num_classes: int, **options) -> FPSEDiscriminator:
    """Factory registered as ``fpse``: validates the options, then builds the discriminator."""
    opts = FPSEOptions.model_validate(options).model_dump()
    return FPSEDiscriminator(num_classes=num_classes, **opts)
