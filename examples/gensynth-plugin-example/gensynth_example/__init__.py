"""An example third-party gensynth plugin: a discriminator, a loss term, a dataset and a segmenter.

The discriminator outputs per-pixel N+1 logits (channel 0 = fake, c+1 = class c), so the OASIS objective
("n+1") and the LabelMix term apply to it unchanged. docs/plugins.md walks through each part.
"""
from __future__ import annotations

from pydantic import BaseModel, Field
from torch import Tensor, nn
from torch.nn.utils import spectral_norm

import gensynth
from gensynth.interfaces import Condition, Discriminator, DiscriminatorOutput, DOutputKind


class TinyFCNOptions(BaseModel):
    width: int = Field(32, ge=1, description="channels of the hidden convolutions")
    depth: int = Field(3, ge=1, description="number of hidden 3x3 convolutions")


class TinyFCNDiscriminator(Discriminator):
    """image (B, 3, H, W) -> logits (B, N+1, H, W)."""

    output_kind = DOutputKind.PIXEL_CLASSES

    def __init__(self, num_classes: int, width: int = 32, depth: int = 3):
        super().__init__()
        self.num_classes = num_classes
        layers, cin = [], 3
        for _ in range(depth):
            layers += [spectral_norm(nn.Conv2d(cin, width, 3, padding=1)), nn.LeakyReLU(0.2)]
            cin = width
        layers.append(nn.Conv2d(cin, num_classes + 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, image: Tensor, cond: Condition | None = None) -> DiscriminatorOutput:
        return DiscriminatorOutput(DOutputKind.PIXEL_CLASSES, self.body(image))


@gensynth.hookimpl
def register_discriminators(register):
    register("tiny-fcn", TinyFCNDiscriminator, options=TinyFCNOptions, default_objective="n+1",
             tiny={"width": 4, "depth": 1},
             description="small fully-convolutional N+1 discriminator (example plugin)")


@gensynth.hookimpl
def register_losses(register):
    from gensynth_example.losses import LogitMatchingLoss, LogitMatchingOptions

    register("logit-matching", LogitMatchingLoss, options=LogitMatchingOptions,
             description="G matches D's logits on fakes to those on reals (example plugin)")


@gensynth.hookimpl
def register_datasets(register):
    from gensynth_example.dataset import ShapesSpec

    register("example-shapes", ShapesSpec(), description="squares and discs, 3 classes, 32x32 (example plugin)")


@gensynth.hookimpl
def register_segmenters(register):
    from gensynth_example.segmenter import ColourSegmenterOptions, build_colour_segmenter

    register("example-colour", build_colour_segmenter, options=ColourSegmenterOptions, tiny={"width": 4},
             description="per-pixel colour classifier (example plugin)")
