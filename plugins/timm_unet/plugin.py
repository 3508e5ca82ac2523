"""Hook implementations of the timm-unet plugin (registered through the ``timm-unet`` entry point)."""
from gensynth import hookimpl

from gensynth_timm.discriminator import TimmUNetDiscriminator
from gensynth_timm.options import TimmUNetOptions


@hookimpl
def register_discriminators(register):
    register("timm-unet", TimmUNetDiscriminator, options=TimmUNetOptions, default_objective="n+1",
             tiny={"backbone": "test_resnet", "decoder_channels": [8, 8, 16, 16, 16], "head_channels": 8},
             description="U-Net discriminator on a (frozen, pretrained) timm backbone with per-pixel N+1 "
                         "logits (DP-SIMS idea)")
