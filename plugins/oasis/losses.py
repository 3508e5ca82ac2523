"""OASIS losses: the class-balanced (N+1)-class cross-entropy objective and the LabelMix term.

Conventions: D logits (B, N+1, H, W), channel 0 = "fake", channel c+1 = semantic class c; label ids
(B, H, W) int64 in [0, N).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from gensynth.interfaces import Capability, Condition, DiscriminatorOutput, DOutputKind, LossTerm, Objective, StepContext
from gensynth.nn.class_balance import class_balancing_weights


# ---------------------------------------------------------------------------------------------
# (N+1)-class cross-entropy
# ---------------------------------------------------------------------------------------------
class NPlusOneOptions(BaseModel):
    """Options of the ``n+1`` objective."""

    model_config = ConfigDict(extra="forbid")

    balancing: bool = Field(True, description="per-batch class-balancing weights (official default); "
                                              "false = all-ones weights (official --no_balancing_inloss)")


class NPlusOneObjective(Objective):
    """OASIS (N+1)-class cross-entropy (segmentation-based adversarial loss).

    d_loss(real): mean over all pixels of w * CE(logits, id+1) (w from :func:`class_balancing_weights`, the
    denominator includes don't-care pixels); d_loss(fake): plain mean CE toward class 0 ("fake");
    g_loss: the balanced CE of D(fake) toward the true classes, as d_loss(real).
    ``dontcare``: the model's don't-care class index (weight 0), or None when every pixel is labelled.
    """

    accepts = frozenset({DOutputKind.PIXEL_CLASSES})
    name = "n+1"

    def __init__(self, dontcare: int | None = 0, balancing: bool = True, **options):
        super().__init__(balancing=balancing, **options)
        self.dontcare = dontcare
        self.balancing = bool(balancing)

    @staticmethod
    def _logits(out: DiscriminatorOutput | Tensor, cond: Condition) -> Tensor:
        logits = out.logits if isinstance(out, DiscriminatorOutput) else out
        n = cond.labels.shape[1]
        if logits.dim() != 4 or logits.shape[1] != n + 1:
            raise ValueError(f"the n+1 objective needs logits (B, {n + 1}, H, W) for {n} classes, "
                             f"got {tuple(logits.shape)}")
        if logits.shape[-2:] != cond.labels.shape[-2:]:
            raise ValueError(f"discriminator logits are {tuple(logits.shape[-2:])} but labels are "
                             f"{tuple(cond.labels.shape[-2:])}")
        return logits.float()

    def weights(self, cond: Condition) -> Tensor:
        """(B, H, W) per-pixel class weights (all ones without balancing)."""
        ids = cond.label_ids
        if not self.balancing:
            return torch.ones(ids.shape, dtype=torch.float32, device=ids.device)
        return class_balancing_weights(ids, cond.labels.shape[1], self.dontcare)

    def balanced_ce(self, out: DiscriminatorOutput | Tensor, cond: Condition) -> Tensor:
        logits = self._logits(out, cond)
        ce = F.cross_entropy(logits, cond.label_ids + 1, reduction="none")
        return (self.weights(cond) * ce).mean()

    def d_loss(self, out, cond, target) -> Tensor:
        if target == "real":
            return self.balanced_ce(out, cond)
        if target == "fake":
            logits = self._logits(out, cond)
            zeros = torch.zeros(logits.shape[0], *logits.shape[2:], dtype=torch.long, device=logits.device)
            return F.cross_entropy(logits, zeros)
        raise ValueError(f"target must be 'real' or 'fake', got {target!r}")

    def g_loss(self, out, cond) -> Tensor:
        return self.balanced_ce(out, cond)

    def uninformative_loss(self, num_classes: int) -> float | None:
        """ln(N+1): the cross-entropy of equal probabilities over the N+1 channels (the balancing weights sum to the
        pixel count, so the weighted mean is ln(N+1) too)."""
        return math.log(num_classes + 1)


# ---------------------------------------------------------------------------------------------
# LabelMix
# ---------------------------------------------------------------------------------------------
def labelmix_mask(label_ids: Tensor, num_classes: int, generator: torch.Generator | None = None) -> Tensor:
    """(B, H, W) ids -> (B, 1, H, W) float mask in {0, 1}: one fair coin per class present in the batch.

    Every class gets its own independent bit, shared by all images of the batch (as the official code
    intends). The official code relabels in place, so class 0 and class 1 share a bit ~76% of the time;
    here each pair of classes agrees with probability exactly 1/2.
    """
    # one coin for every class (absent classes' coins are never looked up): the same distribution as one coin per
    # present class, without torch.unique's host-device synchronisation
    bits = torch.randint(0, 2, (num_classes,), generator=generator,
                         device=generator.device if generator is not None else label_ids.device)
    table = bits.to(device=label_ids.device, dtype=torch.float32)
    return table[label_ids].unsqueeze(1)


def labelmix_mix(real: Tensor, fake: Tensor, mask: Tensor) -> Tensor:
    """mask * real + (1 - mask) * fake; mask (B, 1, H, W) in {0, 1}."""
    return mask * real + (1 - mask) * fake


def labelmix_consistency(discriminator, real: Tensor, fake: Tensor, mask: Tensor, d_real: Tensor, d_fake: Tensor,
                         cond: Condition | None = None, d_mixed: Tensor | None = None) -> Tensor:
    """MSE(D(M*real + (1-M)*fake), M*D(real) + (1-M)*D(fake)) over all logit channels (mean).

    real, fake: (B, 3, H, W); mask: (B, 1, H, W); d_real, d_fake: (B, C, H, W) logits; ``d_mixed``: D's logits on
    the mix when already computed (then ``discriminator`` is not called). Nothing is detached: gradients reach D
    through all three outputs, as in the official code."""
    if d_mixed is None:
        d_mixed = discriminator(labelmix_mix(real, fake, mask), cond)
    d_mixed = d_mixed.logits if isinstance(d_mixed, DiscriminatorOutput) else d_mixed
    target = mask * d_real + (1 - mask) * d_fake
    return F.mse_loss(d_mixed.float(), target.float())


class LabelMixTerm(LossTerm):
    """LabelMix consistency regularisation of D (D side, needs a per-pixel discriminator output).

    Mask: one fair coin per class present in the batch (see :func:`labelmix_mask`, which documents the
    difference from the official code's in-place bug). :meth:`d_input` draws it and forms the mix before D runs,
    so that the method can judge the mix together with the fake and real images."""

    side = "D"
    requires = frozenset({Capability.PIXEL_OUTPUT})
    default_weight = 10.0

    def d_input(self, ctx: StepContext) -> Tensor:
        mask = labelmix_mask(ctx.cond.label_ids, ctx.cond.labels.shape[1]).to(ctx.real.dtype)
        ctx.scratch[self.name] = mask
        return labelmix_mix(ctx.real, ctx.fake, mask)

    def __call__(self, ctx: StepContext) -> Tensor:
        if ctx.d_real is None or ctx.d_fake is None:
            raise ValueError("labelmix needs the discriminator outputs on real and fake images (ctx.d_real, ctx.d_fake)")
        d_real, d_fake = ctx.d_real.logits, ctx.d_fake.logits
        if not isinstance(d_real, Tensor):
            raise ValueError("labelmix needs a single per-pixel logit tensor, got a multi-scale output")
        if self.name not in ctx.scratch:  # called by a method that did not ask for d_input first
            ctx.d_inputs[self.name] = self.d_input(ctx)
        mask = ctx.scratch[self.name]
        d_mixed = ctx.d_extra.get(self.name)
        if d_mixed is None:
            d_mixed = ctx.discriminator(ctx.d_inputs[self.name], ctx.cond)
        return labelmix_consistency(ctx.discriminator, ctx.real, ctx.fake, mask, d_real, d_fake, ctx.cond,
                                    d_mixed=d_mixed)
