"""The ``spade`` (as published) and ``spade+`` (as the OASIS paper defines it) model presets.

Sources are listed in this plugin's README.md. Dotted keys are gensynth configuration keys.
"""
from __future__ import annotations

import dataclasses

from gensynth.interfaces import ModelPreset, PartSpec

from gensynth_spade.method import SpadeMethod

# Instance edge maps: Cityscapes always has instance maps; COCO-Stuff when the *_inst maps are provided
# (SPADE's default). Users without them set both options back to false.
_EDGES = {"model.generator_options.use_instance_edges": True,
          "model.discriminator_options.use_instance_edges": True}

# The demo data's schedule; its model size is the ``tiny`` scale. VGG19 weights cannot be downloaded by
# gensynth, so the perceptual loss is off on the demo data unless a user configures a weights file and
# sets model.losses.vgg back to 10.
_DEMO = {
    "model.losses.vgg": 0,
    "trainer.steps": 300,
    "trainer.log_every": 25,
    "trainer.sample_every": 100,
    "trainer.checkpoint_every": 100,
}

#: ``--scale tiny``: widths that train on a CPU in minutes (the demo data's default)
_TINY = {
    "model.generator_options.ngf": 8,
    "model.generator_options.spade_hidden": 16,
    "model.discriminator_options.ndf": 16,
    "trainer.batch_size": 8,
}

#: ``--scale small``: half the published widths (ngf 32, SPADE hidden 64, ndf 32) and batch 8
_SMALL = {
    "model.generator_options.ngf": 32,
    "model.generator_options.spade_hidden": 64,
    "model.discriminator_options.ndf": 32,
    "trainer.batch_size": 8,
}


def _per_dataset(extra: dict[str, dict]) -> dict[str, dict]:
    base = {
        "cityscapes": {**_EDGES, "model.generator_options.num_upsampling_layers": "more",
                       "trainer.batch_size": 16, "trainer.epochs": 200},
        "ade20k": {"trainer.epochs": 200},
        "coco-stuff": {**_EDGES, "trainer.epochs": 200},
        "coco": {**_EDGES, "trainer.epochs": 200},
        "demo": dict(_DEMO),
    }
    for name, values in extra.items():
        base[name] = {**base.get(name, {}), **values}
    return base


SPADE = ModelPreset(
    name="spade",
    description="SPADE (Park et al., CVPR 2019) as published: hinge + feature matching 10 + VGG 10, TTUR, "
                "linear decay over the second half, multi-scale PatchGAN",
    method="adversarial",
    method_factory=SpadeMethod,
    generator=PartSpec("spade"),
    discriminator=PartSpec("patchgan"),
    objective=PartSpec("hinge"),
    losses={"feature-matching": 10.0, "vgg": 10.0},
    defaults={
        "optim.lr_g": 1e-4,  # TTUR: lr / 2 with lr = 2e-4
        "optim.lr_d": 4e-4,  # TTUR: 2 * lr
        "optim.beta1": 0.0,
        "optim.beta2": 0.9,
        "optim.schedule": "linear-decay",  # niter epochs constant, then niter_decay epochs to 0 (niter = niter_decay)
        "optim.decay_start": 0.5,
        "trainer.ema_decay": None,  # SPADE keeps no weight average
        "trainer.batch_size": 32,
        "trainer.epochs": 200,
    },
    dataset_defaults=_per_dataset({}),
    dontcare="extra-last",
    scales={"tiny": dict(_TINY), "small": dict(_SMALL)},
    default_scales={"demo": "tiny"},
)

# SPADE+ = SPADE without feature matching, with an EMA generator and OASIS' Adam betas and constant lr
SPADE_PLUS = dataclasses.replace(
    SPADE,
    name="spade+",
    description="SPADE+ of the OASIS paper (Sushko et al., ICLR 2021): SPADE without feature matching, with an "
                "EMA generator and OASIS' optimiser settings; keeps the VGG loss",
    losses={"vgg": 10.0},
    defaults={**SPADE.defaults, "optim.beta2": 0.999, "optim.schedule": "constant", "trainer.ema_decay": 0.9999},
    dataset_defaults=_per_dataset({}),
)

PRESETS = (SPADE, SPADE_PLUS)
