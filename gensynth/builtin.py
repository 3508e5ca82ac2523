"""The core's own generic parts, registered as the built-in plugin ``gensynth``.

Objectives that any model may use with binary real/fake discriminators: hinge and
binary cross-entropy, over per-pixel, patch (multi-scale) or per-image logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gensynth.hookspecs import hookimpl
from gensynth.interfaces import Condition, DiscriminatorOutput, DOutputKind, Objective

_BINARY = frozenset({DOutputKind.PIXEL_BINARY, DOutputKind.PATCH, DOutputKind.IMAGE})


def _scales(out: DiscriminatorOutput) -> list[Tensor]:
    return list(out.logits) if isinstance(out.logits, (list, tuple)) else [out.logits]


class HingeObjective(Objective):
    """Hinge loss (SPADE): D: mean relu(1 - D(real)) + mean relu(1 + D(fake)); G: -mean D(fake).
    Multi-scale outputs are averaged over scales."""

    accepts = _BINARY
    name = "hinge"

    def d_loss(self, out, cond: Condition, target) -> Tensor:
        sign = -1.0 if target == "real" else 1.0
        scales = _scales(out)
        return sum(F.relu(1.0 + sign * x).mean() for x in scales) / len(scales)

    def g_loss(self, out, cond: Condition) -> Tensor:
        scales = _scales(out)
        return sum(-x.mean() for x in scales) / len(scales)


class BCEObjective(Objective):
    """Non-saturating binary cross-entropy on logits (real -> 1, fake -> 0; G pushes fakes to 1)."""

    accepts = _BINARY
    name = "bce"

    def d_loss(self, out, cond: Condition, target) -> Tensor:
        value = 1.0 if target == "real" else 0.0
        scales = _scales(out)
        return sum(F.binary_cross_entropy_with_logits(x, torch.full_like(x, value)) for x in scales) / len(scales)

    def g_loss(self, out, cond: Condition) -> Tensor:
        scales = _scales(out)
        return sum(F.binary_cross_entropy_with_logits(x, torch.ones_like(x)) for x in scales) / len(scales)


@hookimpl
def register_objectives(register):
    register("hinge", HingeObjective, description="hinge loss on real/fake logits (SPADE)")
    register("bce", BCEObjective, description="binary cross-entropy on real/fake logits")


# --------------------------------------------------------------------------------------------
# VGG19 perceptual loss (generic: any generator may use it; SPADE and SPADE+ do)
# --------------------------------------------------------------------------------------------
from pydantic import BaseModel as _BaseModel, ConfigDict as _ConfigDict, Field as _Field  # noqa: E402

from gensynth.interfaces import LossTerm, StepContext  # noqa: E402


class VGGLossOptions(_BaseModel):
    """Options of the ``vgg`` loss term (model.loss_options.vgg)."""

    model_config = _ConfigDict(extra="forbid")

    weights_path: str | None = _Field(None, description="torchvision vgg19 state dict (vgg19-dcbb9e9d.pth); "
                                                       "default: the torch hub cache")
    normalize_input: bool = _Field(False, description="map [-1, 1] images to ImageNet statistics (SPADE: no)")
    random_init: bool = _Field(False, description="random VGG weights, no file (tests only)")


class VGGLossTerm(LossTerm):
    """VGG19 perceptual loss between fake and real (relu1_1..relu5_1, weights 1/32..1; weight 10 as SPADE).

    The network is built (and its weights file read) when the term is constructed, so a missing file
    fails before training starts with MissingWeightsError."""

    side = "G"
    default_weight = 10.0

    def __init__(self, weight: float | None = None, **options):
        super().__init__(weight, **options)
        from gensynth.nn.vgg import VGGLoss

        opts = VGGLossOptions.model_validate(options)
        self.loss = VGGLoss(opts.weights_path, random_init=opts.random_init, normalize_input=opts.normalize_input)

    def to(self, device) -> "VGGLossTerm":
        self.loss.to(device)
        return self

    def __call__(self, ctx: StepContext) -> Tensor:
        if next(self.loss.parameters()).device != ctx.fake.device:
            self.loss.to(ctx.fake.device)
        return self.loss(ctx.fake, ctx.real)


@hookimpl
def register_losses(register):
    register("vgg", VGGLossTerm, options=VGGLossOptions, tiny={"random_init": True},
             description="VGG19 perceptual loss (weights from a local torchvision vgg19 file)")
    from gensynth.nn.vae import KLDLoss

    register("kl", KLDLoss, description="KL divergence of a VAE encoder's latent from N(0, I) (SPADE, CC-FPSE: 0.05)")


# --------------------------------------------------------------------------------------------
# Segmenters for mIoU evaluation (gensynth.eval.segmenters)
# --------------------------------------------------------------------------------------------
@hookimpl
def register_segmenters(register):
    from gensynth.eval.segmenters import register_core_segmenters

    register_core_segmenters(register)
