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
