"""DP-SIMS losses: a focal (N+1)-class objective, a patch-level contrastive term and a diversity term.

The paper names "a pixel-wise focal GAN loss", "a patch-level contrastive loss" and "a diversity constraint";
their formulas, weights, temperature and gamma are UNPUBLISHED. These are the standard forms named in the
comments; each is an option any model can switch on (``--objective focal-n+1``, ``--loss patch-nce=W``,
``--loss diversity=W``).

Conventions: D logits (B, N+1, H, W), channel 0 = "fake", c+1 = class c; label ids (B, H, W) in [0, N).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from gensynth.errors import IncompatibleError
from gensynth.interfaces import (Capability, Condition, DiscriminatorOutput, DOutputKind, LossTerm, NoiseKind,
                                 Objective, StepContext)
from gensynth.nn.class_balance import class_balancing_weights


# ---------------------------------------------------------------------------------------------
# focal (N+1)-class cross-entropy
# ---------------------------------------------------------------------------------------------
class FocalNPlusOneOptions(BaseModel):
    """Options of the ``focal-n+1`` objective."""

    model_config = ConfigDict(extra="forbid")

    gamma: float = Field(2.0, ge=0, description="focal exponent: each pixel's CE times (1 - p_target)^gamma; "
                                                "0 = the OASIS n+1 loss exactly (UNPUBLISHED value)")
    balancing: bool = Field(True, description="OASIS's per-batch class-balancing weights on the real/G terms")
    focal_fake: bool = Field(True, description="apply the focal factor to the D loss on fakes too")


def focal_ce(logits: Tensor, target: Tensor, gamma: float) -> Tensor:
    """Per-pixel focal cross-entropy (Lin et al. 2017), (B, C, H, W) logits, (B, H, W) targets -> (B, H, W):
    -(1 - p_t)^gamma * log p_t, p_t the softmax probability of the target; gamma = 0 is the plain CE."""
    logp = F.log_softmax(logits.float(), dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    ce = -logp
    if gamma == 0:
        return ce
    return (1 - logp.exp()).clamp_min(0).pow(gamma) * ce


class FocalNPlusOneObjective(Objective):
    """OASIS's class-balanced (N+1)-class cross-entropy with a focal factor (1 - p)^gamma on every pixel.

    d_loss(real) = mean(w * FL(logits, id+1)); d_loss(fake) = mean(FL(logits, 0)) (plain CE when
    ``focal_fake`` is false); g_loss = d_loss(real) on D(fake); w: :func:`class_balancing_weights`. With gamma = 0
    every value equals the ``n+1`` objective's.
    """

    accepts = frozenset({DOutputKind.PIXEL_CLASSES})
    name = "focal-n+1"

    def __init__(self, dontcare: int | None = 0, gamma: float = 2.0, balancing: bool = True,
                 focal_fake: bool = True, **options):
        super().__init__(gamma=gamma, balancing=balancing, focal_fake=focal_fake, **options)
        self.dontcare = dontcare
        self.gamma = float(gamma)
        self.balancing = bool(balancing)
        self.focal_fake = bool(focal_fake)

    @staticmethod
    def _logits(out: DiscriminatorOutput | Tensor, cond: Condition) -> Tensor:
        logits = out.logits if isinstance(out, DiscriminatorOutput) else out
        n = cond.labels.shape[1]
        if not isinstance(logits, Tensor) or logits.dim() != 4 or logits.shape[1] != n + 1:
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"the focal-n+1 objective needs logits (B, {n + 1}, H, W) for {n} classes, got {got}")
        if logits.shape[-2:] != cond.labels.shape[-2:]:
            raise ValueError(f"discriminator logits are {tuple(logits.shape[-2:])} but labels are "
                             f"{tuple(cond.labels.shape[-2:])}")
        return logits

    def balanced(self, out, cond: Condition) -> Tensor:
        logits = self._logits(out, cond)
        ids = cond.label_ids
        loss = focal_ce(logits, ids + 1, self.gamma)
        if self.balancing:
            loss = class_balancing_weights(ids, cond.labels.shape[1], self.dontcare) * loss
        return loss.mean()

    def d_loss(self, out, cond, target) -> Tensor:
        if target == "real":
            return self.balanced(out, cond)
        if target == "fake":
            logits = self._logits(out, cond)
            zeros = torch.zeros(logits.shape[0], *logits.shape[2:], dtype=torch.long, device=logits.device)
            return focal_ce(logits, zeros, self.gamma if self.focal_fake else 0.0).mean()
        raise ValueError(f"target must be 'real' or 'fake', got {target!r}")

    def g_loss(self, out, cond) -> Tensor:
        return self.balanced(out, cond)

    def uninformative_loss(self, num_classes: int) -> float | None:
        """Equal probabilities 1/(N+1) everywhere: (1 - 1/(N+1))^gamma * ln(N+1) (the balancing weights average
        to 1)."""
        p = 1.0 / (num_classes + 1)
        return (1 - p) ** self.gamma * math.log(num_classes + 1)


# ---------------------------------------------------------------------------------------------
# patch-level contrastive loss
# ---------------------------------------------------------------------------------------------
class PatchNCEOptions(BaseModel):
    """Options of ``patch-nce`` (model.loss_options.patch-nce.*)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.07, gt=0, description="softmax temperature tau (CUT's 0.07; UNPUBLISHED for "
                                                      "DP-SIMS)")
    num_patches: int = Field(256, ge=2, description="locations sampled per image and feature map (all when the "
                                                    "map has fewer)")
    levels: list[int] | None = Field(None, description="indices of D's feature maps to use (default all)")


def patch_nce(fake: Tensor, real: Tensor, temperature: float, num_patches: int,
              generator: torch.Generator | None = None) -> Tensor:
    """InfoNCE between the features of generated and real images at the same locations (PatchNCE, Park et al.
    2020, with the real image's feature as the positive).

    fake, real: (B, C, h, w). P = min(num_patches, h*w) locations are drawn per image (the same for fake and
    real); features are L2-normalised over C; for each fake location i the logits are cos(f_i, r_j) / tau over the
    P real locations j of the same image, and the target is j = i. Returns the mean cross-entropy. ``real`` is
    used as given (detach it to keep the loss from moving the real branch).
    """
    b, c, h, w = fake.shape
    f = F.normalize(fake.float().flatten(2), dim=1)  # (B, C, h*w)
    r = F.normalize(real.float().flatten(2), dim=1)
    n = h * w
    if num_patches < n:
        idx = torch.randperm(n, generator=generator, device=generator.device if generator is not None else "cpu")
        idx = idx[:num_patches].to(fake.device)
        f, r = f[:, :, idx], r[:, :, idx]
    logits = torch.bmm(f.transpose(1, 2), r) / temperature  # (B, P, P): fake location i vs real location j
    target = torch.arange(logits.shape[1], device=logits.device).expand(b, -1)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


class PatchNCELoss(LossTerm):
    """G side: :func:`patch_nce` between D's features of the fake and of the real image, per feature map, averaged
    over the maps (and scales). Needs a discriminator that provides features (``dp-sims`` gives its conditioned
    backbone maps); the G step runs D on the real images too."""

    side = "G"
    requires = frozenset({Capability.FEATURES})
    needs_real_d_output = True
    default_weight = 1.0

    def __init__(self, weight: float | None = None, temperature: float = 0.07, num_patches: int = 256,
                 levels: list[int] | None = None):
        super().__init__(weight)
        self.temperature = float(temperature)
        self.num_patches = int(num_patches)
        self.levels = levels

    def __call__(self, ctx: StepContext) -> Tensor:
        if ctx.d_fake is None or ctx.d_real is None or ctx.d_fake.features is None or ctx.d_real.features is None:
            raise ValueError("patch-nce needs the discriminator's features on fake and real images "
                             "(ctx.d_fake.features, ctx.d_real.features)")
        fakes = [f for scale in ctx.d_fake.features for f in scale]
        reals = [r for scale in ctx.d_real.features for r in scale]
        pick = range(len(fakes)) if self.levels is None else self.levels
        bad = [i for i in pick if not -len(fakes) <= i < len(fakes)]
        if bad:
            raise ValueError(f"model.loss_options.patch-nce.levels = {self.levels}: the discriminator gives "
                             f"{len(fakes)} feature maps")
        values = [patch_nce(fakes[i], reals[i].detach(), self.temperature, self.num_patches) for i in pick]
        return torch.stack(values).mean()


# ---------------------------------------------------------------------------------------------
# mode-seeking diversity loss
# ---------------------------------------------------------------------------------------------
class DiversityOptions(BaseModel):
    """Options of ``diversity`` (model.loss_options.diversity.*)."""

    model_config = ConfigDict(extra="forbid")

    eps: float = Field(1e-5, gt=0, description="added to the ratio before inverting it (MSGAN's 1e-5)")


def mode_seeking(image1: Tensor, image2: Tensor, z1: Tensor, z2: Tensor, eps: float = 1e-5) -> Tensor:
    """Mode-seeking loss (Mao et al., MSGAN, CVPR 2019): 1 / (mean|G(z1) - G(z2)| / mean|z1 - z2| + eps).

    image1, image2: (B, 3, H, W) generated from the same labels with noise z1, z2 (any equal shapes). Minimising it
    pushes the images apart in proportion to their noises' distance."""
    ratio = (image1.float() - image2.float()).abs().mean() / (z1.float() - z2.float()).abs().mean()
    return 1.0 / (ratio + eps)


class DiversityLoss(LossTerm):
    """G side: :func:`mode_seeking` between two samples of the same labels with independent noise. Needs a
    generator that takes noise. When the generator reports the noise of its sample (``aux["z"]``, as ``dp-sims``
    does) the first sample is ``ctx.fake`` and G runs once more in the G step; otherwise twice more."""

    side = "G"
    default_weight = 1.0

    def __init__(self, weight: float | None = None, eps: float = 1e-5):
        super().__init__(weight)
        self.eps = float(eps)

    def __call__(self, ctx: StepContext) -> Tensor:
        from gensynth.method import unwrap

        if ctx.generator is None:
            raise ValueError("diversity needs the generator in the step context (ctx.generator)")
        g = unwrap(ctx.generator)
        if getattr(g, "noise", NoiseKind.NONE) == NoiseKind.NONE or not getattr(g, "z_dim", 0):
            raise IncompatibleError(f"loss 'diversity' needs a generator that takes noise; {type(g).__name__} takes "
                                    f"none. Drop it (--set model.losses.diversity=0)")
        b = ctx.cond.labels.shape[0]
        z1 = ctx.gen.aux.get("z") if ctx.gen is not None else None
        if z1 is not None and z1.shape[0] == b:
            image1 = ctx.fake
        else:
            z1 = torch.randn(b, g.z_dim, device=ctx.real.device)
            image1 = ctx.generator(ctx.cond, z1).image
        z2 = torch.randn(b, g.z_dim, device=ctx.real.device)
        image2 = ctx.generator(ctx.cond, z2).image
        return mode_seeking(image1, image2, z1, z2, self.eps)
