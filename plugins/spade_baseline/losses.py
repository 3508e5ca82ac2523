"""SPADE's feature-matching loss term (the VAE's KL divergence is the core's ``kl``: gensynth.nn.vae)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from gensynth.errors import ConfigError
from gensynth.interfaces import Capability, LossTerm, StepContext


def feature_matching(fake_features: list[list[Tensor]], real_features: list[list[Tensor]]) -> Tensor:
    """SPADE/pix2pixHD feature matching (unweighted).

    fake_features / real_features: per scale, the discriminator's intermediate maps (final prediction
    excluded). Returns sum over scales and layers of mean |fake - real.detach()|, divided by the number
    of scales (scalar).
    """
    if len(fake_features) != len(real_features):
        raise ValueError(f"feature matching: {len(fake_features)} fake scales vs {len(real_features)} real scales")
    num_d = len(fake_features)
    total = fake_features[0][0].new_zeros(())
    for fake_scale, real_scale in zip(fake_features, real_features):
        for f, r in zip(fake_scale, real_scale):
            total = total + F.l1_loss(f, r.detach())
    return total / num_d


class FeatureMatchingLoss(LossTerm):
    """L1 between D's intermediate features of fakes and (detached) reals, averaged over scales (SPADE, x10)."""

    side = "G"
    requires = frozenset({Capability.FEATURES})
    needs_real_d_output = True
    default_weight = 10.0

    def __call__(self, ctx: StepContext) -> Tensor:
        if ctx.d_fake is None or ctx.d_real is None or ctx.d_fake.features is None or ctx.d_real.features is None:
            raise ConfigError("the 'feature-matching' loss needs discriminator features of fake and real images; "
                              "use a discriminator that provides them (patchgan, patchgan-single) or set "
                              "model.losses.feature-matching=0")
        return feature_matching(ctx.d_fake.features, ctx.d_real.features)


# the VAE terms live in the core (shared with CC-FPSE); re-exported for existing imports
from gensynth.nn.vae import KLDLoss, kl_divergence  # noqa: E402,F401
