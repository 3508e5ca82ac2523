"""Hook implementations of the CC-FPSE plugin (registered through the ``gensynth`` entry point ``ccfpse``)."""
from __future__ import annotations

from gensynth import hookimpl

from gensynth_ccfpse.discriminator import FPSEDiscriminator, FPSEOptions, build_fpse
from gensynth_ccfpse.generator import CondConvGeneratorOptions, build_cc_fpse_generator
from gensynth_ccfpse.losses import FPSEFeatureMatchingLoss
from gensynth_ccfpse.presets import cc_fpse_preset


@hookimpl
def register_generators(register):
    register("cc-fpse", build_cc_fpse_generator, options=CondConvGeneratorOptions, style_encoder=False,
             tiny={"ngf": 4, "hidden": 8, "size": [64, 64]},
             description="CC-FPSE generator: label-pyramid-predicted per-pixel depthwise convolutions (NeurIPS 2019)")


@hookimpl
def register_discriminators(register):
    register("fpse", build_fpse, options=FPSEOptions, cls=FPSEDiscriminator, default_objective="hinge",
             tiny={"ndf": 4},
             description="FPSE: feature-pyramid semantics-embedding discriminator on the image, labels projected "
                         "at 3 scales (CC-FPSE)")


@hookimpl
def register_losses(register):
    register("fpse-feature-matching", FPSEFeatureMatchingLoss,
             description="L1 between discriminator features of fakes and reals, averaged over every map (CC-FPSE, 20)")


@hookimpl
def register_models(register):
    register("cc-fpse", cc_fpse_preset(), description="CC-FPSE (NeurIPS 2019)")


@hookimpl
def register_commands(cli):
    from gensynth_ccfpse.importer import add_commands

    add_commands(cli)
