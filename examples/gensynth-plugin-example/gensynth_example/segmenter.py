"""An example segmenter for mIoU: a small per-pixel classifier of colours."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from gensynth.interfaces import Segmenter


class ColourSegmenterOptions(BaseModel):
    """Options of ``example-colour`` (eval.segmenter_options.example-colour.*)."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(8, ge=1, description="hidden channels of the 1x1 convolutions")
    weights: str | None = Field(None, description="state dict to load (None: random weights)")


class ColourSegmenter(Segmenter):
    """image (B, 3, H, W) in [-1, 1] -> logits (B, num_classes, H, W)."""

    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.num_classes = num_classes
        self.net = nn.Sequential(nn.Conv2d(3, width, 1), nn.ReLU(), nn.Conv2d(width, num_classes, 1))

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image)


def build_colour_segmenter(num_classes: int, checkpoint=None, device="cpu", width: int = 8,
                           weights: str | None = None) -> ColourSegmenter:
    """The factory gensynth calls: ``checkpoint`` is the evaluated run's (unused here), ``device`` where to put it."""
    import torch

    seg = ColourSegmenter(num_classes, width)
    if weights is not None:
        seg.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return seg.to(device).eval()
