"""An example loss term: the generator matches the discriminator's logits on fakes to those on reals."""
from __future__ import annotations

from pydantic import BaseModel, Field
from torch import Tensor

from gensynth.interfaces import LossTerm, StepContext


class LogitMatchingOptions(BaseModel):
    """Options of ``logit-matching`` (model.loss_options.logit-matching.*)."""

    power: int = Field(1, ge=1, le=2, description="1: L1, 2: squared L2")


class LogitMatchingLoss(LossTerm):
    """G side: mean |D(fake) - D(real)|^power over every logit (each scale of a PATCH output), reals detached.

    ``needs_real_d_output`` makes the G step run D on the real images too (ctx.d_real); without it ctx.d_real is
    None in a G step."""

    side = "G"
    needs_real_d_output = True
    default_weight = 1.0

    def __init__(self, weight: float | None = None, power: int = 1):
        super().__init__(weight)
        self.power = power

    def __call__(self, ctx: StepContext) -> Tensor:
        fake = ctx.d_fake.logits
        real = ctx.d_real.logits
        fakes = fake if isinstance(fake, list) else [fake]
        reals = real if isinstance(real, list) else [real]
        total = sum(((f - r.detach()).abs() ** self.power).mean() for f, r in zip(fakes, reals))
        return total / len(fakes)
