"""The ``cc-fpse`` model preset: the official recipe of xh-liu/CC-FPSE and a demo entry.

Facts: shared/reference/wave2-models-and-demos.md §1.7-1.8 (read from the official code at 5619e63). Dotted keys
are gensynth configuration keys; the plugin README says what is verified and what is inferred.
"""
from __future__ import annotations

from gensynth.interfaces import ModelPreset, PartSpec

#: options: hinge, TTUR (lr 2e-4: G lr/2, D 2lr), betas (0, 0.9), niter + niter_decay epochs (constant, then a
#: linear decay to 0), no weight average; train.sh: batch 1 per process x 8 processes
OFFICIAL_DEFAULTS = {
    "optim.lr_g": 1e-4,
    "optim.lr_d": 4e-4,
    "optim.beta1": 0.0,
    "optim.beta2": 0.9,
    "optim.schedule": "linear-decay",
    "optim.decay_start": 0.5,
    "trainer.ema_decay": None,
    "trainer.batch_size": 8,
    "trainer.epochs": 200,
    "data.flip": True,
}

#: every official script runs with --use_vae (KL 0.05); the VAE's Linear head is built for the training size
_VAE = {"model.generator_options.use_vae": True, "model.losses.kl": 0.05}
_EDGES = {"model.generator_options.use_instance_edges": True,
          "model.discriminator_options.use_instance_edges": True}

#: ``--scale tiny`` (the demo data's default): a small CC-FPSE that trains visibly on the 64x64 procedural demo on a
#: CPU in minutes. Two deviations, measured (README.md): with the official xavier gain 0.02 this narrow generator
#: still outputs flat grey after 300 steps (at lr_g 1e-4 and at 4e-4); with gain 1.0 and lr_g 4e-4 it draws the
#: layout and colours by step 200 (about 1 s per step at batch 8 on one idle core)
TINY_SCALE = {
    "model.generator_options.ngf": 8,
    "model.generator_options.hidden": 16,
    "model.generator_options.init_gain": 1.0,
    "model.discriminator_options.ndf": 16,
    "optim.lr_g": 4e-4,
    "trainer.batch_size": 8,
}

#: ``--scale small``: half the official widths (ngf 32, predictor hidden 32, ndf 32) and batch 8
SMALL_SCALE = {
    "model.generator_options.ngf": 32,
    "model.generator_options.hidden": 32,
    "model.discriminator_options.ndf": 32,
    "trainer.batch_size": 8,
}

#: the demo data's schedule (its model size is the tiny scale): no VAE; the VGG loss is off (its weights cannot be
#: downloaded)
DEMO_DEFAULTS = {
    "model.losses.vgg": 0,
    "trainer.steps": 300,
    "trainer.log_every": 25,
    "trainer.sample_every": 100,
    "trainer.checkpoint_every": 100,
}

OFFICIAL_DATASET_DEFAULTS = {
    # dataset_mode cityscapes -> 'more' (first map 4x8 at 256x512); label_nc 35 + instance edges; test: epoch 200
    "cityscapes": {**_VAE, **_EDGES, "model.generator_options.num_upsampling_layers": "more",
                   "model.generator_options.size": [256, 512], "trainer.epochs": 200},
    # 150 classes + don't-care, no instances; test: epoch 200
    "ade20k": {**_VAE, "model.generator_options.size": [256, 256], "trainer.epochs": 200},
    # train.sh: niter 100 + niter_decay 100, lambda_feat 20; 182 classes + don't-care + instance edges
    "coco-stuff": {**_VAE, **_EDGES, "model.generator_options.size": [256, 256], "trainer.epochs": 200},
    "demo": dict(DEMO_DEFAULTS),
}


def cc_fpse_preset() -> ModelPreset:
    """``cc-fpse``: cc-fpse generator, fpse discriminator, hinge, feature matching 20, VGG 10 (+ KL 0.05 with the
    VAE on the official datasets)."""
    return ModelPreset(
        name="cc-fpse",
        description="CC-FPSE (Liu et al., NeurIPS 2019): conditional-convolution generator, feature-pyramid "
                    "semantics-embedding discriminator; hinge + feature matching 20 + VGG 10 (+ KL 0.05), TTUR",
        method="adversarial-style",
        generator=PartSpec("cc-fpse"),
        discriminator=PartSpec("fpse"),
        objective=PartSpec("hinge"),
        losses={"fpse-feature-matching": 20.0, "vgg": 10.0},
        defaults=dict(OFFICIAL_DEFAULTS),
        dataset_defaults={k: dict(v) for k, v in OFFICIAL_DATASET_DEFAULTS.items()},
        dontcare="extra-last",
        scales={"tiny": dict(TINY_SCALE), "small": dict(SMALL_SCALE)},
        default_scales={"demo": "tiny"},
    )
