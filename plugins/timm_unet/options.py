"""Options of the ``timm-unet`` discriminator (validated by gensynth.build before the network is built)."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gensynth.errors import suggest


class TimmUNetOptions(BaseModel):
    """``model.discriminator_options`` of ``timm-unet``.

    DP-SIMS uses a frozen ImageNet ConvNeXt-L encoder; the default here is the much smaller
    ``convnext_tiny`` so that the discriminator fits next to an OASIS generator on one GPU.
    """

    model_config = ConfigDict(extra="forbid")

    backbone: str = Field("convnext_tiny", description="timm model name, created with features_only=True")
    weights_path: Optional[str] = Field(
        None, description="local file with the backbone's pretrained state dict (.safetensors, or a torch "
                          "file loaded with weights_only=True); None: random initialisation")
    freeze_encoder: bool = Field(True, description="keep the backbone fixed (no gradients, eval-mode BN)")
    out_indices: Optional[list[int]] = Field(None, description="which backbone feature levels to use (default all)")
    decoder_channels: Optional[list[int]] = Field(
        None, description="decoder width per used feature level, shallow to deep; default min(64*2^i, 256)")
    head_channels: int = Field(32, ge=1, description="width of the full-resolution stage (image stem + head)")
    feature_norm: Literal["channel", "layer", "none"] = Field(
        "channel", description="standardisation of each backbone feature map before its learned 1x1 projection: "
                               "'channel' per channel over space, 'layer' per pixel over channels")
    spectral: bool = Field(True, description="spectral norm on the decoder convolutions")
    backbone_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra timm.create_model arguments")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        import timm

        if not timm.is_model(name):
            raise ValueError(f"unknown timm backbone {name!r}.{suggest(name, timm.list_models())} "
                             f"List them with: python -c \"import timm; print(timm.list_models())\"")
        return name

    @field_validator("decoder_channels")
    @classmethod
    def _positive(cls, v):
        if v is not None and (not v or any(c < 1 for c in v)):
            raise ValueError(f"decoder_channels must be a non-empty list of positive widths, got {v}")
        return v
