"""SPADE's generator-side loss terms: feature matching and the VAE's KL divergence."""
from __future__ import annotations

import torch
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


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over batch and dimensions, as SPADE:
    -0.5 * sum(1 + logvar - mu^2 - exp(logvar)). mu, logvar: (B, z_dim) -> scalar."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


class KLDLoss(LossTerm):
    """KL divergence of SPADE's VAE encoder output from N(0, I) (weight 0.05)."""

    side = "G"
    requires = frozenset({Capability.GENERATOR_AUX})
    default_weight = 0.05

    def __call__(self, ctx: StepContext) -> Tensor:
        aux = ctx.gen.aux if ctx.gen is not None else {}
        if "mu" not in aux or "logvar" not in aux:
            raise ConfigError("the 'kl' loss needs the generator's mu and logvar: use a generator with a style "
                              "encoder (spade with use_vae=true) and pass the real image as cond.style_image "
                              "(the spade presets' training method does), or set model.losses.kl=0")
        return kl_divergence(aux["mu"], aux["logvar"])
