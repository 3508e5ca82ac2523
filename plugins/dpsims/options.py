"""Options of the ``dp-sims`` discriminator and generator (validated before anything is built).

Defaults marked UNPUBLISHED are gensynth's choices: the paper's public text (abstract, captions, summaries) does
not give them; README.md lists each against what is published.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gensynth.errors import suggest

FeatureConditioning = Literal["none", "standardise-sigmoid", "layernorm"]


def default_weights_dir() -> Path:
    """Where backbone weight files are looked for when ``weights_path`` is unset: ``$GENSYNTH_WEIGHTS_DIR``, else
    ``~/.cache/gensynth/weights``."""
    return Path(os.environ.get("GENSYNTH_WEIGHTS_DIR") or Path.home() / ".cache" / "gensynth" / "weights")


class DPSIMSDiscriminatorOptions(BaseModel):
    """``model.discriminator_options.dp-sims.*``."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = Field("convnext_large", description="timm model name, created with features_only=True "
                                                        "(published: ConvNeXt-L; ConvNeXt-XL on COCO-Stuff)")
    pretrained: bool = Field(True, description="load the backbone's pretrained weights from a local file (never "
                                               "downloaded); false: random initialisation (tests, the demo)")
    weights_path: Optional[str] = Field(
        None, description="the weights file (.safetensors or a torch state dict); default "
                          "$GENSYNTH_WEIGHTS_DIR or ~/.cache/gensynth/weights, file <backbone>.safetensors")
    out_indices: Optional[list[int]] = Field(None, description="backbone feature levels to use (default all)")
    frozen_stages: Union[Literal["all"], int] = Field(
        "all", description="'all': the whole backbone is fixed (published: frozen); k: the modules up to feature "
                           "level k-1 are fixed, the rest fine-tuned; 0: everything fine-tuned")
    backbone_lr_scale: float = Field(0.1, ge=0, description="learning rate of the fine-tuned backbone parts, as a "
                                                            "fraction of optim.lr_d (UNPUBLISHED)")
    feature_conditioning: FeatureConditioning = Field(
        "standardise-sigmoid", description="between backbone and decoder: 'standardise-sigmoid' sigmoid of each "
                                           "channel standardised over the image's positions; 'layernorm' each "
                                           "pixel's channel vector (learned affine); 'none' (published: a "
                                           "conditioning with a sigmoid; exact form UNPUBLISHED)")
    decoder_channels: Optional[list[int]] = Field(
        None, description="decoder width per feature level, shallow to deep; default min(128*2^i, 512) "
                          "(UNPUBLISHED)")
    head_channels: int = Field(64, ge=1, description="width of the full-resolution stage (image stem + head)")
    image_stem: bool = Field(True, description="a trainable conv on the image joins the decoder at full resolution")
    spectral: bool = Field(True, description="spectral norm on the decoder convolutions (as OASIS's D)")
    backbone_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra timm.create_model arguments")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        import timm

        if not timm.is_model(name):
            raise ValueError(f"unknown timm backbone {name!r}.{suggest(name, timm.list_models())} "
                             f"List them with: python -c \"import timm; print(timm.list_models())\"")
        return name

    @field_validator("frozen_stages")
    @classmethod
    def _non_negative(cls, v):
        if isinstance(v, int) and v < 0:
            raise ValueError(f"frozen_stages must be 'all' or a number of feature levels >= 0, got {v}")
        return v

    @field_validator("decoder_channels")
    @classmethod
    def _positive(cls, v):
        if v is not None and (not v or any(c < 1 for c in v)):
            raise ValueError(f"decoder_channels must be a non-empty list of positive widths, got {v}")
        return v

    def resolved_weights_path(self) -> Path:
        return Path(self.weights_path).expanduser() if self.weights_path else \
            default_weights_dir() / f"{self.backbone}.safetensors"


class DPSIMSGeneratorOptions(BaseModel):
    """``model.generator_options.dp-sims.*`` (widths and blocks UNPUBLISHED: OASIS's generator widths)."""

    model_config = ConfigDict(extra="forbid")

    channels: int = Field(64, ge=1, description="trunk base width; widths 16c,16c,16c,8c,4c,2c,c as OASIS")
    num_res_blocks: int = Field(6, ge=1, le=10, description="trunk blocks; the trunk starts at the label size / "
                                                            "2^(num_res_blocks-1)")
    encoder_channels: int = Field(32, ge=1, description="semantic-map encoder width at full resolution; "
                                                        "doubles per level up to encoder_max_channels")
    encoder_max_channels: int = Field(256, ge=1, description="semantic-map encoder's widest level")
    z_dim: int = Field(64, ge=1, description="noise channels (3D noise: per image, or per pixel)")
    noise_tokens: int = Field(16, ge=1, description="K: noise tokens projected from z")
    token_dim: int = Field(64, ge=1, description="width of a noise token and of the attention")
    heads: int = Field(1, ge=1, description="attention heads (token_dim must be divisible by heads)")
    noise_scales: Optional[list[int]] = Field(
        None, description="label-feature downsampling factors (1 = full resolution, 2, 4 ...) whose features "
                          "query the noise tokens; default every level but full resolution")
    lowres_labels: Literal["area", "nearest"] = Field(
        "area", description="how the label map is brought to the trunk's start size: 'area' class fractions, "
                            "'nearest' one-hot")
    norm: Literal["batch", "syncbatch", "instance"] = Field("syncbatch", description="param-free norm of the "
                                                                                     "modulated trunk")
    spade_hidden: int = Field(128, ge=1, description="hidden width of each modulation (gamma, beta) network")
    spectral: bool = Field(True, description="spectral norm on the trunk's convolutions")

    @field_validator("noise_scales")
    @classmethod
    def _powers_of_two(cls, v):
        if v is not None and any(s < 1 or s & (s - 1) for s in v):
            raise ValueError(f"noise_scales must be powers of two >= 1 (1 = full resolution), got {v}")
        return v
