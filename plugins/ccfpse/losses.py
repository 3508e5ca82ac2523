"""CC-FPSE's feature-matching loss term (``fpse-feature-matching``).

The official CC-FPSE code matches the FPSE discriminator's four bottom-up features (enc2..enc5) of fake and real
images with L1 and weights each by ``lambda_feat / 4`` (``lambda_feat`` = 20 in train.sh). This term averages the L1
over every feature map D returns, whatever scale list it sits in, so with weight 20 it is the official loss; SPADE's
``feature-matching`` instead divides by the number of logit scales (3 for FPSE).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from gensynth.errors import ConfigError
from gensynth.interfaces import Capability, LossTerm, StepContext


def feature_matching_mean(fake_features: list[list[Tensor]], real_features: list[list[Tensor]]) -> Tensor:
    """Mean over every feature map of mean |fake - real.detach()| (scalar). Both: per scale, lists of (B, C, h, w)."""
    fakes = [f for scale in fake_features for f in scale]
    reals = [r for scale in real_features for r in scale]
    if len(fakes) != len(reals) or not fakes:
        raise ValueError(f"feature matching: {len(fakes)} fake feature maps vs {len(reals)} real ones")
    total = fakes[0].new_zeros(())
    for f, r in zip(fakes, reals):
        total = total + F.l1_loss(f, r.detach())
    return total / len(fakes)


class FPSEFeatureMatchingLoss(LossTerm):
    """L1 between D's features of fakes and (detached) reals, averaged over every feature map (CC-FPSE, x20)."""

    side = "G"
    requires = frozenset({Capability.FEATURES})
    needs_real_d_output = True
    default_weight = 20.0

    def __call__(self, ctx: StepContext) -> Tensor:
        if ctx.d_fake is None or ctx.d_real is None or ctx.d_fake.features is None or ctx.d_real.features is None:
            raise ConfigError("the 'fpse-feature-matching' loss needs discriminator features of fake and real "
                              "images; use a discriminator that provides them (fpse, patchgan) or set "
                              "model.losses.fpse-feature-matching=0")
        return feature_matching_mean(ctx.d_fake.features, ctx.d_real.features)
