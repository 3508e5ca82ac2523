"""The ``oasis`` model preset: parts, the official code's defaults, per-dataset script values and the paper's.

Where the paper and the code differ, ``dataset_defaults`` hold the code/scripts values (which produced the
released checkpoints) and ``paper_defaults`` the paper's (selected by ``model.values=paper``); see README.md.
"""
from __future__ import annotations

from gensynth.interfaces import ModelPreset, PartSpec

#: the official code's defaults (config.py) that apply to every dataset
OFFICIAL_DEFAULTS = {
    "optim.lr_g": 1e-4,
    "optim.lr_d": 4e-4,
    "optim.beta1": 0.0,
    "optim.beta2": 0.999,
    "optim.schedule": "constant",
    "trainer.ema_decay": 0.9999,
    "trainer.batch_size": 32,
    "trainer.epochs": 200,
    "trainer.bn_refresh_batches": 50,
    "data.flip": True,
}

#: the official training scripts / per-dataset overrides
OFFICIAL_DATASET_DEFAULTS = {
    "cityscapes": {
        "optim.lr_g": 4e-4,
        "model.losses.labelmix": 5.0,
        "trainer.ema_decay": 0.999,
        "trainer.batch_size": 20,
    },
    # ade20k / coco use the preset's labelmix 10
    "ade20k": {"trainer.ema_decay": 0.9999, "trainer.batch_size": 32},
    "ade20k-outdoors": {"trainer.ema_decay": 0.9999, "trainer.batch_size": 32},
    "coco-stuff": {"trainer.ema_decay": 0.9999, "trainer.batch_size": 32, "trainer.epochs": 100},
}

#: the demo dataset's training schedule (its model size is the ``tiny`` scale below): 300 steps, logs and
#: samples often enough to watch
DEMO_DEFAULTS = {
    "optim.lr_g": 2e-4,
    "trainer.ema_decay": 0.999,
    "trainer.steps": 300,
    "trainer.bn_refresh_batches": 10,
    "trainer.log_every": 10,
    "trainer.sample_every": 50,
    "trainer.checkpoint_every": 100,
}

#: ``--scale tiny``: an OASIS that trains visibly on the 64x64 procedural demo in a few CPU minutes: G ~1.5M
#: parameters (4 blocks from 8x8, widths 256..16, 16 noise channels), D ~80k; measured ~0.7-0.8 s per step at
#: batch 8 on one idle CPU core, so 300 steps take about 4 minutes (10 on a loaded shared machine); after them D
#: segments real demo images at ~79% pixel accuracy (majority class: 34%). The demo data's default.
TINY_SCALE = {
    "model.generator_options.channels": 16,
    "model.generator_options.num_res_blocks": 4,
    "model.generator_options.z_dim": 16,
    "model.generator_options.norm": "batch",
    "model.generator_options.spade_hidden": 32,
    "model.discriminator_options.num_res_blocks": 4,
    "model.discriminator_options.width": 0.125,
    "trainer.batch_size": 8,
}

#: ``--scale small``: half the official widths (about a quarter of the parameters: G 18.5M, D 5.6M on
#: Cityscapes) and batch 8, for one small GPU or a patient CPU at a reduced --size
SMALL_SCALE = {
    "model.generator_options.channels": 32,
    "model.generator_options.spade_hidden": 64,
    "model.discriminator_options.width": 0.5,
    "trainer.batch_size": 8,
}

#: the paper's appendix, where it differs from the code (LabelMix 5 ADE20K/Cityscapes, 10 COCO; EMA 0.9999,
#: lr_g 1e-4 everywhere)
PAPER_DEFAULTS = {
    "cityscapes": {"optim.lr_g": 1e-4, "model.losses.labelmix": 5.0, "trainer.ema_decay": 0.9999},
    "ade20k": {"optim.lr_g": 1e-4, "model.losses.labelmix": 5.0, "trainer.ema_decay": 0.9999},
    "ade20k-outdoors": {"optim.lr_g": 1e-4, "model.losses.labelmix": 5.0, "trainer.ema_decay": 0.9999},
    "coco-stuff": {"optim.lr_g": 1e-4, "trainer.ema_decay": 0.9999},  # labelmix 10: the preset's
}


def oasis_preset() -> ModelPreset:
    """The ``oasis`` preset (ICLR 2021): oasis generator, oasis-unet discriminator, n+1 objective, LabelMix 10."""
    return ModelPreset(
        name="oasis",
        description="OASIS (ICLR 2021): SPADE generator with 3D noise, U-Net N+1 discriminator, LabelMix",
        method="adversarial",
        generator=PartSpec("oasis"),
        discriminator=PartSpec("oasis-unet"),
        objective=PartSpec("n+1"),
        losses={"labelmix": 10.0},
        defaults=dict(OFFICIAL_DEFAULTS),
        dataset_defaults={**{k: dict(v) for k, v in OFFICIAL_DATASET_DEFAULTS.items()}, "demo": dict(DEMO_DEFAULTS)},
        paper_defaults={k: dict(v) for k, v in PAPER_DEFAULTS.items()},
        dontcare="class",
        scales={"tiny": dict(TINY_SCALE), "small": dict(SMALL_SCALE)},
        default_scales={"demo": "tiny"},
    )
