"""SPADE's training step: the generic adversarial method, with the real image as the VAE's style input.

SPADE encodes the real image in both steps when the generator has a VAE encoder (the D step regenerates
the fake from it under no_grad). Generators without a style encoder are unaffected.
"""
from __future__ import annotations

from torch import Tensor

from gensynth.interfaces import Condition
from gensynth.method import AdversarialMethod, unwrap


def with_style(G, real: Tensor, cond: Condition) -> Condition:
    """cond with ``style_image = real`` when G declares ``uses_style_image`` and none is set."""
    if getattr(unwrap(G), "uses_style_image", False) and cond.style_image is None:
        return Condition(cond.labels, cond.instance_edges, real, cond.ids)
    return cond


class SpadeMethod(AdversarialMethod):
    """AdversarialMethod feeding the real image to a style encoder (SPADE with use_vae)."""

    def d_losses(self, G, D, real, cond, step=0):
        return super().d_losses(G, D, real, with_style(G, real, cond), step)

    def g_losses(self, G, D, real, cond, step=0):
        return super().g_losses(G, D, real, with_style(G, real, cond), step)
