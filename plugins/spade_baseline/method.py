"""SPADE's training step: the core's adversarial method with the real image as the VAE's style input.

SPADE encodes the real image in both steps when the generator has a VAE encoder (the D step regenerates the fake
from it under no_grad). The method lives in the core (:class:`gensynth.method.StyleEncoderMethod`), shared with
CC-FPSE; ``SpadeMethod`` is its name here.
"""
from __future__ import annotations

from gensynth.method import StyleEncoderMethod, with_style  # noqa: F401


class SpadeMethod(StyleEncoderMethod):
    """:class:`gensynth.method.StyleEncoderMethod` (the real image feeds SPADE's style encoder, use_vae)."""
