"""Discriminator variants of the OASIS paper's ablations (Sushko, Schoenfeld et al., ICLR 2021).

The paper compares discriminator architectures (multi-scale / single-scale PatchGAN, the ResNet encoder
of the OASIS U-Net alone, the U-Net) and ways of giving the label map to the U-Net (input
concatenation, projection, as N+1 ground truth, as class-balanced N+1 ground truth). The PatchGANs are
the SPADE plugin's ``patchgan`` / ``patchgan-single``; "N+1 ground truth" and "class-balanced N+1" are
``oasis-unet`` with the ``n+1`` objective and ``balancing`` false / true. This module adds:

* ``oasis-encoder``: the six down blocks of the OASIS U-Net alone, on the label map concatenated to the
  image (SPADE's way of conditioning an encoder-shaped D), ending in a BigGAN-style global pooling and a
  linear layer: one real/fake logit per image (``IMAGE``). The pooling is a mean (resolution independent)
  rather than BigGAN's sum. Its block outputs are returned as features, so feature matching applies.
* ``oasis-unet-concat``: the OASIS U-Net whose input is cat(image, one-hot labels), ending in a 1x1 conv to
  one real/fake logit per pixel (``PIXEL_BINARY``).
* ``oasis-unet-projection``: the OASIS U-Net on the image only; per pixel, logit = psi(phi) + <E[y], phi>
  where phi is the last decoder feature, psi a 1x1 conv and E[y] a learned embedding of the pixel's class
  (a 1x1 conv without bias on the one-hot map), as in projection discriminators (Miyato & Koyama 2018).

All three default to the ``bce`` objective: the binary counterpart of OASIS's N+1 cross-entropy, so
that the comparison isolates how D uses the labels. The paper's exact loss for these rows is not in
our fact sheets; pick ``--objective hinge`` to train them as SPADE does. The widths and blocks are those
of ``oasis-unet`` (same options), reusing :class:`gensynth_oasis.discriminator.ResidualBlockD`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gensynth.errors import ConfigError
from gensynth.interfaces import Condition, Discriminator, DiscriminatorOutput, DOutputKind
from gensynth.nn.spade import init_xavier, maybe_sn
from gensynth_oasis.discriminator import (OASISDiscriminatorOptions, UNetDiscriminatorBase, build_encoder,
                                          discriminator_widths)


class OASISEncoderOptions(OASISDiscriminatorOptions):
    """Options of ``oasis-encoder`` (``last_channels`` is unused: there is no decoder)."""

    label_input: bool = Field(True, description="concatenate the one-hot label map to the image (conditional D)")


def _labels_for(image: Tensor, cond: Condition | None, who: str) -> Tensor:
    """cond.labels (B, N, h, w) resized (nearest) to the image's (H, W) and cast to its dtype."""
    if cond is None:
        raise ValueError(f"discriminator {who!r} reads the label map: call it as D(image, cond)")
    labels = cond.labels
    if labels.shape[-2:] != image.shape[-2:]:
        labels = F.interpolate(labels, size=image.shape[-2:], mode="nearest")
    return labels.to(image.dtype)


def _check_classes(labels: Tensor, num_classes: int, who: str) -> None:
    if labels.shape[1] != num_classes:
        raise ValueError(f"discriminator {who!r} was built for {num_classes} label channels, "
                         f"got labels with {labels.shape[1]}")


class OASISEncoderDiscriminator(Discriminator):
    """The OASIS U-Net's encoder alone: (image (B, 3, H, W), labels) -> one logit per image (B, 1).

    features: [[block_1_out, ..., block_L_out]] (one scale) for feature matching.
    Needs H, W >= 2**num_res_blocks.
    """

    output_kind = DOutputKind.IMAGE
    provides_features = True
    takes_labels = True

    def __init__(self, num_classes: int, options: OASISEncoderOptions | None = None):
        super().__init__()
        opt = options or OASISEncoderOptions()
        self.options = opt
        self.num_classes = int(num_classes)
        chans, _ = discriminator_widths(opt.num_res_blocks, opt.channels, opt.width, opt.last_channels)
        self.in_channels = 3 + (self.num_classes if opt.label_input else 0)
        self.channels = [self.in_channels] + chans[1:]
        self.body_down = build_encoder(self.channels, opt.spectral)
        self.linear = maybe_sn(nn.Linear(self.channels[-1], 1), opt.spectral)
        init_xavier(self)

    def forward(self, image: Tensor, cond: Condition | None = None) -> DiscriminatorOutput:
        levels = self.options.num_res_blocks
        if min(image.shape[-2:]) < 2 ** levels:
            raise ConfigError(f"oasis-encoder with num_res_blocks={levels} needs images of at least "
                              f"{2 ** levels}x{2 ** levels}, got {image.shape[-2]}x{image.shape[-1]}")
        x = image
        if self.options.label_input:
            labels = _labels_for(image, cond, "oasis-encoder")
            _check_classes(labels, self.num_classes, "oasis-encoder")
            x = torch.cat([image, labels], dim=1)
        feats = []
        for block in self.body_down:
            x = block(x)
            feats.append(x)
        pooled = F.leaky_relu(x, 0.2).mean(dim=(2, 3))
        return DiscriminatorOutput(self.output_kind, self.linear(pooled), [feats])


class OASISConcatUNet(UNetDiscriminatorBase):
    """OASIS U-Net on cat(image, one-hot labels): (B, 3+N, H, W) -> real/fake logits (B, 1, H, W)."""

    output_kind = DOutputKind.PIXEL_BINARY
    takes_labels = True

    def __init__(self, num_classes: int, options: OASISDiscriminatorOptions | None = None):
        super().__init__(num_classes, options or OASISDiscriminatorOptions(), out_channels=1,
                         extra_inputs=int(num_classes))
        init_xavier(self)

    def forward(self, image: Tensor, cond: Condition | None = None) -> DiscriminatorOutput:
        labels = _labels_for(image, cond, "oasis-unet-concat")
        _check_classes(labels, self.num_classes, "oasis-unet-concat")
        return DiscriminatorOutput(self.output_kind, self.layer_up_last(self.unet(torch.cat([image, labels], dim=1))))


class OASISProjectionUNet(UNetDiscriminatorBase):
    """OASIS U-Net on the image with per-pixel projection conditioning.

    phi = U-Net features (B, C, H, W); logits (B, 1, H, W) = psi(phi) + sum_c(E(labels) * phi), where
    E is a 1x1 conv N -> C without bias (a class embedding looked up per pixel).
    """

    output_kind = DOutputKind.PIXEL_BINARY
    takes_labels = True

    def __init__(self, num_classes: int, options: OASISDiscriminatorOptions | None = None):
        super().__init__(num_classes, options or OASISDiscriminatorOptions(), out_channels=1)
        self.embed = maybe_sn(nn.Conv2d(self.num_classes, self.last_channels, 1, bias=False), self.options.spectral)
        init_xavier(self)

    def projection(self, phi: Tensor, labels: Tensor) -> Tensor:
        """phi (B, C, H, W), labels (B, N, H, W) one-hot -> (B, 1, H, W) inner products <E[y], phi>."""
        return (self.embed(labels) * phi).sum(dim=1, keepdim=True)

    def forward(self, image: Tensor, cond: Condition | None = None) -> DiscriminatorOutput:
        labels = _labels_for(image, cond, "oasis-unet-projection")
        _check_classes(labels, self.num_classes, "oasis-unet-projection")
        phi = self.unet(image)
        return DiscriminatorOutput(self.output_kind, self.layer_up_last(phi) + self.projection(phi, labels))


def build_oasis_encoder(num_classes: int, **options) -> OASISEncoderDiscriminator:
    """Factory of ``oasis-encoder``: ``(num_classes=N, **OASISEncoderOptions)``."""
    return OASISEncoderDiscriminator(num_classes, OASISEncoderOptions(**options))


def build_oasis_unet_concat(num_classes: int, **options) -> OASISConcatUNet:
    """Factory of ``oasis-unet-concat``: ``(num_classes=N, **OASISDiscriminatorOptions)``."""
    return OASISConcatUNet(num_classes, OASISDiscriminatorOptions(**options))


def build_oasis_unet_projection(num_classes: int, **options) -> OASISProjectionUNet:
    """Factory of ``oasis-unet-projection``: ``(num_classes=N, **OASISDiscriminatorOptions)``."""
    return OASISProjectionUNet(num_classes, OASISDiscriminatorOptions(**options))


_TINY = {"num_res_blocks": 4, "width": 0.125}  # gensynth plugins check


def register_ablation_discriminators(register) -> None:
    """Register ``oasis-encoder``, ``oasis-unet-concat`` and ``oasis-unet-projection`` (objective: ``bce``)."""
    register("oasis-encoder", build_oasis_encoder, options=OASISEncoderOptions, cls=OASISEncoderDiscriminator,
             default_objective="bce", tiny=_TINY,
             description="OASIS ablation: the U-Net's ResNet encoder alone on labels+image, one logit per image")
    register("oasis-unet-concat", build_oasis_unet_concat, options=OASISDiscriminatorOptions, cls=OASISConcatUNet,
             default_objective="bce", tiny=_TINY,
             description="OASIS ablation: U-Net on image+labels (input concatenation), per-pixel real/fake")
    register("oasis-unet-projection", build_oasis_unet_projection, options=OASISDiscriminatorOptions,
             cls=OASISProjectionUNet, default_objective="bce", tiny=_TINY,
             description="OASIS ablation: U-Net with per-pixel projection of a class embedding, real/fake")
