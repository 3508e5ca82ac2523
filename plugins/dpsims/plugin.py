"""Hook implementations of the DP-SIMS plugin (registered through the ``dp-sims`` entry point)."""
from gensynth import hookimpl

from gensynth_dpsims.discriminator import DPSIMSDiscriminator
from gensynth_dpsims.generator import build_dpsims_generator
from gensynth_dpsims.losses import (DiversityLoss, DiversityOptions, FocalNPlusOneObjective, FocalNPlusOneOptions,
                                    PatchNCELoss, PatchNCEOptions)
from gensynth_dpsims.options import DPSIMSDiscriminatorOptions, DPSIMSGeneratorOptions
from gensynth_dpsims.presets import dpsims_preset, dpsims_small_preset

#: a tiny instance for gensynth plugins check / gensynth.testing: a random 0.2M-parameter timm ConvNeXt
TINY_D = {"backbone": "test_convnext", "pretrained": False, "frozen_stages": "all",
          "decoder_channels": [8, 8, 16, 16], "head_channels": 8}
TINY_G = {"channels": 4, "num_res_blocks": 3, "z_dim": 4, "encoder_channels": 4, "encoder_max_channels": 8,
          "noise_tokens": 3, "token_dim": 8, "spade_hidden": 8, "norm": "batch"}


@hookimpl
def register_generators(register):
    register("dp-sims", build_dpsims_generator, options=DPSIMSGeneratorOptions, tiny=TINY_G,
             description="DP-SIMS-style generator: label-map encoder modulating a trunk fed low-res labels, noise "
                         "by cross-attention (CVPR 2024)")


@hookimpl
def register_discriminators(register):
    register("dp-sims", DPSIMSDiscriminator, options=DPSIMSDiscriminatorOptions, default_objective="n+1",
             tiny=TINY_D,
             description="DP-SIMS-style discriminator: frozen pretrained timm backbone, feature conditioning, "
                         "U-Net decoder, per-pixel N+1 logits")


@hookimpl
def register_objectives(register):
    register("focal-n+1", FocalNPlusOneObjective, options=FocalNPlusOneOptions,
             description="OASIS class-balanced (N+1)-class cross-entropy with a focal factor (1-p)^gamma")


@hookimpl
def register_losses(register):
    register("patch-nce", PatchNCELoss, options=PatchNCEOptions, tiny={"num_patches": 16},
             description="patch-level contrastive loss between D's features of fake and real at the same locations")
    register("diversity", DiversityLoss, options=DiversityOptions,
             description="mode-seeking diversity loss: 1 / (|G(z1)-G(z2)| / |z1-z2| + eps)")


@hookimpl
def register_models(register):
    register("dp-sims", dpsims_preset(), description="DP-SIMS-style (CVPR 2024), ConvNeXt-L discriminator backbone")
    register("dp-sims-small", dpsims_small_preset(),
             description="DP-SIMS-style with a ConvNeXt-atto discriminator backbone, for one GPU")
