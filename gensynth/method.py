"""The generic adversarial training method: one D step and one G step built from parts.

OASIS: the D step runs D on the fake, on the real and (through the LabelMix term) on the mix;
SPADE: a D that declares ``joint_real_fake`` sees real and fake in one concatenated call, and the
G step also runs D on real images when a term (feature matching) needs real features.
"""
from __future__ import annotations

import torch
from torch import Tensor

from gensynth.interfaces import Condition, DiscriminatorOutput, StepContext, TrainingMethod
from gensynth.nn.spectral import consecutive_calls
from gensynth.train.health import label_dependence, output_spread


def unwrap(module):
    """The bare module under DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, torch.nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def _cat_conds(conds: list[Condition]) -> Condition:
    """Conditions concatenated along the batch (a field is kept only when every condition has it)."""
    def cat(field: str):
        parts = [getattr(c, field) for c in conds]
        return None if any(x is None for x in parts) else torch.cat(parts, dim=0)

    return Condition(cat("labels"), cat("instance_edges"), cat("style_image"), cat("ids"))


def run_d_pair(D, fake: Tensor, real: Tensor, cond: Condition, want_real: bool = True
               ) -> tuple[DiscriminatorOutput, DiscriminatorOutput | None]:
    """D on fake and real images: jointly (one call) when the discriminator asks for it."""
    if want_real and getattr(unwrap(D), "joint_real_fake", False):
        out = D(torch.cat([fake, real], dim=0), _cat_conds([cond, cond]))
        d_fake, d_real = out.split([fake.shape[0], real.shape[0]])
        return d_fake, d_real
    d_fake = D(fake, cond)
    d_real = D(real, cond) if want_real else None
    return d_fake, d_real


class AdversarialMethod(TrainingMethod):
    """Alternating updates: ``g_losses`` then ``d_losses`` on the same batch (as OASIS and SPADE).

    ``merge_d_calls``: when D is ``batch_independent``, the D step judges the fake, the real and the D-side terms'
    images (LabelMix's mix) in one call, with each chunk's spectral norm as in consecutive calls
    (:func:`gensynth.nn.spectral.consecutive_calls`): the same results up to rounding, fewer passes over D's
    weights (set by ``trainer.merge_d_calls``)."""

    def __init__(self, objective, terms, merge_d_calls: bool = True):
        super().__init__(objective, terms)
        self.merge_d_calls = merge_d_calls

    def d_losses(self, G, D, real, cond, step=0):
        with torch.no_grad():
            gen = G(cond)
        fake = gen.image.detach()
        ctx = StepContext(real=real, fake=fake, cond=cond, discriminator=D, gen=gen, step=step)
        d_terms = [t for t in self.terms if t.side == "D"]
        for term in d_terms:
            images = term.d_input(ctx)
            if images is not None:
                ctx.d_inputs[term.name] = images
        bare = unwrap(D)
        if self.merge_d_calls and getattr(bare, "batch_independent", False):
            images = [fake, real, *ctx.d_inputs.values()]
            sizes = [x.shape[0] for x in images]
            joint_cond = _cat_conds([cond] * len(images)) if getattr(bare, "takes_labels", True) else None
            with consecutive_calls(bare, sizes):
                out = D(torch.cat(images, dim=0), joint_cond)
            ctx.d_fake, ctx.d_real, *extra = out.split(sizes)
            ctx.d_extra.update(zip(ctx.d_inputs, extra))
        else:
            ctx.d_fake, ctx.d_real = run_d_pair(D, fake, real, cond)
        if self.measure_outputs:
            self.stats["d_spread"] = output_spread(ctx.d_real, ctx.d_fake)
        losses = {
            "D_fake": self.objective.d_loss(ctx.d_fake, cond, "fake"),
            "D_real": self.objective.d_loss(ctx.d_real, cond, "real"),
        }
        for term in d_terms:
            losses[term.name] = term.weight * term(ctx)
        return losses

    def g_losses(self, G, D, real, cond, step=0):
        gen = G(cond)
        want_real = any(t.side == "G" and t.needs_real_d_output for t in self.terms)
        d_fake, d_real = run_d_pair(D, gen.image, real, cond, want_real=want_real)
        losses = {"G_adv": self.objective.g_loss(d_fake, cond)}
        if self.measure_images:
            self.stats["label_dependence"] = label_dependence(gen.image, cond.labels)
            self.stats["label_dependence_real"] = label_dependence(real, cond.labels)
        else:  # figures of this step only
            self.stats.pop("label_dependence", None), self.stats.pop("label_dependence_real", None)
        ctx = StepContext(real=real, fake=gen.image, cond=cond, discriminator=D, d_real=d_real, d_fake=d_fake,
                          gen=gen, step=step, generator=G)
        for term in self.terms:
            if term.side == "G":
                losses[term.name] = term.weight * term(ctx)
        return losses


def with_style(G, real: Tensor, cond: Condition) -> Condition:
    """cond with ``style_image = real`` when G declares ``uses_style_image`` and none is set."""
    if getattr(unwrap(G), "uses_style_image", False) and cond.style_image is None:
        return Condition(cond.labels, cond.instance_edges, real, cond.ids)
    return cond


class StyleEncoderMethod(AdversarialMethod):
    """AdversarialMethod feeding the real image to a generator's style encoder (SPADE and CC-FPSE with a VAE).

    Both steps encode the real image when the generator declares ``uses_style_image`` (the D step regenerates the
    fake from it under no_grad), as the official SPADE and CC-FPSE code; other generators are unaffected."""

    def d_losses(self, G, D, real, cond, step=0):
        return super().d_losses(G, D, real, with_style(G, real, cond), step)

    def g_losses(self, G, D, real, cond, step=0):
        return super().g_losses(G, D, real, with_style(G, real, cond), step)


METHODS = {"adversarial": AdversarialMethod, "adversarial-style": StyleEncoderMethod}
