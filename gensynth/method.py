"""The generic adversarial training method: one D step and one G step built from parts.

OASIS: the D step runs D on the fake, on the real and (through the LabelMix term) on the mix;
SPADE: a D that declares ``joint_real_fake`` sees real and fake in one concatenated call, and the
G step also runs D on real images when a term (feature matching) needs real features.
"""
from __future__ import annotations

import torch
from torch import Tensor

from gensynth.interfaces import Condition, DiscriminatorOutput, StepContext, TrainingMethod


def unwrap(module):
    """The bare module under DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, torch.nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def _cat_cond(a: Condition, b: Condition) -> Condition:
    def cat(x, y):
        return None if x is None else torch.cat([x, y], dim=0)

    ids = cat(a.ids, b.ids) if a.ids is not None and b.ids is not None else None
    return Condition(cat(a.labels, b.labels), cat(a.instance_edges, b.instance_edges), cat(a.style_image, b.style_image),
                     ids)


def run_d_pair(D, fake: Tensor, real: Tensor, cond: Condition, want_real: bool = True
               ) -> tuple[DiscriminatorOutput, DiscriminatorOutput | None]:
    """D on fake and real images: jointly (one call) when the discriminator asks for it."""
    if want_real and getattr(unwrap(D), "joint_real_fake", False):
        out = D(torch.cat([fake, real], dim=0), _cat_cond(cond, cond))
        d_fake, d_real = out.split([fake.shape[0], real.shape[0]])
        return d_fake, d_real
    d_fake = D(fake, cond)
    d_real = D(real, cond) if want_real else None
    return d_fake, d_real


class AdversarialMethod(TrainingMethod):
    """Alternating updates: ``g_losses`` then ``d_losses`` on the same batch (as OASIS and SPADE)."""

    def d_losses(self, G, D, real, cond, step=0):
        with torch.no_grad():
            gen = G(cond)
        fake = gen.image.detach()
        d_fake, d_real = run_d_pair(D, fake, real, cond)
        losses = {
            "D_fake": self.objective.d_loss(d_fake, cond, "fake"),
            "D_real": self.objective.d_loss(d_real, cond, "real"),
        }
        ctx = StepContext(real=real, fake=fake, cond=cond, discriminator=D, d_real=d_real, d_fake=d_fake, gen=gen, step=step)
        for term in self.terms:
            if term.side == "D":
                losses[term.name] = term.weight * term(ctx)
        return losses

    def g_losses(self, G, D, real, cond, step=0):
        gen = G(cond)
        want_real = any(t.side == "G" and t.needs_real_d_output for t in self.terms)
        d_fake, d_real = run_d_pair(D, gen.image, real, cond, want_real=want_real)
        losses = {"G_adv": self.objective.g_loss(d_fake, cond)}
        ctx = StepContext(real=real, fake=gen.image, cond=cond, discriminator=D, d_real=d_real, d_fake=d_fake,
                          gen=gen, step=step)
        for term in self.terms:
            if term.side == "G":
                losses[term.name] = term.weight * term(ctx)
        return losses


METHODS = {"adversarial": AdversarialMethod}
