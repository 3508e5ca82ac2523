"""The ``dp-sims`` and ``dp-sims-small`` presets.

Published (secondary summaries): a frozen ImageNet ConvNeXt-L discriminator backbone (XL also on COCO-Stuff), a
pixel-wise focal GAN loss, a patch-level contrastive loss, a diversity constraint, OASIS as the base. Everything
else here is UNPUBLISHED and inherited from OASIS's official recipe (optimiser, EMA, batch sizes, LabelMix) or
chosen by gensynth (loss weights, gamma, generator widths); README.md lists each value and its option.
"""
from __future__ import annotations

from gensynth.interfaces import ModelPreset, PartSpec

D = "model.discriminator_options.dp-sims."
G = "model.generator_options.dp-sims."

#: OASIS's official optimiser and EMA (UNPUBLISHED for DP-SIMS)
DEFAULTS = {
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

#: OASIS's per-dataset script values (Cityscapes: LabelMix 5, EMA 0.999, batch 20; COCO-Stuff 100 epochs)
DATASET_DEFAULTS = {
    "cityscapes": {"model.losses.labelmix": 5.0, "trainer.ema_decay": 0.999, "trainer.batch_size": 20},
    "ade20k": {},
    "ade20k-outdoors": {},
    "coco-stuff": {"trainer.epochs": 100},
}

#: ``--scale tiny`` (the demo data's default): trains on the 64x64 procedural demo data on a CPU in minutes with no
#: download: a random, fine-tuned tiny timm backbone (test_convnext, 0.2M parameters) and a small generator
#: (benchmarks/README.md has the timing)
TINY_SCALE = {
    G + "channels": 16,
    G + "num_res_blocks": 4,
    G + "z_dim": 16,
    G + "norm": "batch",
    G + "spade_hidden": 32,
    G + "encoder_channels": 16,
    G + "encoder_max_channels": 64,
    G + "noise_tokens": 8,
    G + "token_dim": 32,
    D + "backbone": "test_convnext",
    D + "pretrained": False,
    D + "frozen_stages": 0,
    D + "backbone_lr_scale": 1.0,
    D + "decoder_channels": [16, 32, 32, 64],
    D + "head_channels": 16,
    "trainer.batch_size": 8,
}

#: the demo data's schedule (its model size is the tiny scale)
DEMO_DEFAULTS = {
    "optim.lr_g": 2e-4,
    "trainer.ema_decay": 0.999,
    "trainer.steps": 300,
    "trainer.bn_refresh_batches": 10,
    "trainer.log_every": 10,
    "trainer.sample_every": 50,
    "trainer.checkpoint_every": 100,
}

#: loss weights (UNPUBLISHED): LabelMix as OASIS, contrastive at 1, diversity at 0.1: on the demo (benchmarks/README.md,
#: learning.py, seed 0, 300 steps) weight 1 made samples diverse but wrecked the layout (generated-image mIoU 0.16),
#: weight 0 gave identical samples (MS-SSIM 1.0), 0.1 kept both (mIoU 0.42, MS-SSIM 0.74)
LOSSES = {"labelmix": 10.0, "patch-nce": 1.0, "diversity": 0.1}


def dpsims_preset() -> ModelPreset:
    """``dp-sims``: ConvNeXt-L frozen backbone D, cross-attention-noise G, focal N+1, LabelMix, PatchNCE, diversity."""
    return ModelPreset(
        name="dp-sims",
        description="DP-SIMS-style (CVPR 2024): frozen pretrained ConvNeXt-L discriminator backbone, label-encoder "
                    "generator with cross-attention noise, focal N+1, contrastive and diversity losses",
        method="adversarial",
        generator=PartSpec("dp-sims"),
        discriminator=PartSpec("dp-sims"),
        objective=PartSpec("focal-n+1"),
        losses=dict(LOSSES),
        defaults=dict(DEFAULTS),
        dataset_defaults={**{k: dict(v) for k, v in DATASET_DEFAULTS.items()}, "demo": dict(DEMO_DEFAULTS)},
        dontcare="class",
        scales={"tiny": dict(TINY_SCALE), "small": dict(SMALL_SCALE)},
        default_scales={"demo": "tiny"},
    )


#: ``--scale small`` of ``dp-sims``, and the ``dp-sims-small`` preset: a small backbone and generator for one GPU:
#: ConvNeXt-atto (3.4M parameters, pretrained weights from a local file), generator base width 32
SMALL_SCALE = {
    D + "backbone": "convnext_atto",
    D + "decoder_channels": [64, 128, 256, 256],
    D + "head_channels": 32,
    G + "channels": 32,
    G + "encoder_max_channels": 128,
    "trainer.batch_size": 16,
}
SMALL_DEFAULTS = {**DEFAULTS, **SMALL_SCALE}


def dpsims_small_preset() -> ModelPreset:
    """``dp-sims-small``: the same model with a ConvNeXt-atto backbone and half the generator width."""
    return ModelPreset(
        name="dp-sims-small",
        description="DP-SIMS-style with a small backbone (ConvNeXt-atto) and half the generator width, for one GPU",
        method="adversarial",
        generator=PartSpec("dp-sims"),
        discriminator=PartSpec("dp-sims"),
        objective=PartSpec("focal-n+1"),
        losses=dict(LOSSES),
        defaults=dict(SMALL_DEFAULTS),
        dataset_defaults={**{k: dict(v) for k, v in DATASET_DEFAULTS.items()}, "demo": dict(DEMO_DEFAULTS)},
        dontcare="class",
        scales={"tiny": dict(TINY_SCALE)},
        default_scales={"demo": "tiny"},
    )
