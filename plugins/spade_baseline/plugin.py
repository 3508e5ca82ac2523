"""Hook implementations of the SPADE baseline plugin (registered through the gensynth entry point)."""
from __future__ import annotations

from gensynth import hookimpl

from gensynth_spade.discriminator import (PatchGANDiscriminator, PatchGANOptions, PatchGANSingleOptions,
                                          build_patchgan, build_patchgan_single)
from gensynth_spade.generator import SpadeGeneratorOptions, build_spade_generator
from gensynth_spade.losses import FeatureMatchingLoss
from gensynth_spade.presets import PRESETS


@hookimpl
def register_generators(register):
    register("spade", build_spade_generator, options=SpadeGeneratorOptions, style_encoder=False,
             tiny={"ngf": 4, "spade_hidden": 8, "size": [64, 64]},
             description="SPADE generator (Park et al. 2019), optional VAE style encoder (use_vae)")


@hookimpl
def register_discriminators(register):
    register("patchgan", build_patchgan, options=PatchGANOptions, cls=PatchGANDiscriminator,
             default_objective="hinge", tiny={"ndf": 8},
             description="multi-scale PatchGAN on labels + image (SPADE/pix2pixHD, 2 scales)")
    register("patchgan-single", build_patchgan_single, options=PatchGANSingleOptions, cls=PatchGANDiscriminator,
             default_objective="hinge", tiny={"ndf": 8}, description="single-scale PatchGAN on labels + image")


@hookimpl
def register_losses(register):
    register("feature-matching", FeatureMatchingLoss,
             description="L1 between discriminator features of fakes and reals (SPADE, weight 10)")


@hookimpl
def register_models(register):
    for preset in PRESETS:
        register(preset.name, preset, description=preset.description)
