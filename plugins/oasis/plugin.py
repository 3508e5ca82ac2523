"""Hook implementations of the OASIS plugin (registered through the ``gensynth`` entry point)."""
from __future__ import annotations

from gensynth import hookimpl
from gensynth_oasis.discriminator import OASISDiscriminator, OASISDiscriminatorOptions, build_oasis_discriminator
from gensynth_oasis.generator import OASISGeneratorOptions, build_oasis_generator
from gensynth_oasis.losses import LabelMixTerm, NPlusOneObjective, NPlusOneOptions
from gensynth_oasis.presets import oasis_preset


@hookimpl
def register_generators(register):
    register("oasis", build_oasis_generator, options=OASISGeneratorOptions,
             tiny={"channels": 8, "num_res_blocks": 4, "spade_hidden": 8, "z_dim": 4},
             description="OASIS generator: SPADE residual blocks, 3D noise (ICLR 2021)")


@hookimpl
def register_discriminators(register):
    register("oasis-unet", build_oasis_discriminator, options=OASISDiscriminatorOptions, cls=OASISDiscriminator,
             default_objective="n+1", tiny={"num_res_blocks": 4, "width": 0.125},
             description="OASIS U-Net discriminator: per-pixel N+1 class logits")
    from gensynth_oasis.ablations import register_ablation_discriminators

    register_ablation_discriminators(register)


@hookimpl
def register_objectives(register):
    register("n+1", NPlusOneObjective, options=NPlusOneOptions,
             description="OASIS (N+1)-class cross-entropy, class-balanced per batch")


@hookimpl
def register_losses(register):
    register("labelmix", LabelMixTerm, description="LabelMix consistency of the discriminator (OASIS)")


@hookimpl
def register_models(register):
    register("oasis", oasis_preset(), description="OASIS (ICLR 2021)")


@hookimpl
def register_commands(cli):
    from gensynth_oasis.importer import add_commands

    add_commands(cli)
