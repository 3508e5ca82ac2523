"""SPADE on a genuine Cityscapes sample (instance edges from real instance maps). Skipped without the fixtures."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

REAL = Path(__file__).resolve().parents[2] / "shared" / "testdata-real" / "cityscapes-mini"

pytestmark = [pytest.mark.realdata,
              pytest.mark.skipif(not REAL.is_dir(), reason="../shared/testdata-real/cityscapes-mini is absent")]


def test_spade_cityscapes_real_sample_with_instance_edges(tmp_path):
    from gensynth.build import build_discriminator, build_generator, build_method, resolve_parts
    from gensynth.config import resolve
    from gensynth.data.loader import eval_batches, to_condition

    cli = {"model.preset": "spade", "data.name": "cityscapes", "data.root": str(REAL), "data.size": [64, 128],
           "data.cache_dir": str(tmp_path / "cache"), "data.num_workers": 0, "model.losses.vgg": 0,
           "model.generator_options.ngf": 4,
           "model.generator_options.spade_hidden": 8, "model.discriminator_options.ndf": 8}
    cfg, _ = resolve(cli)
    parts = resolve_parts(cfg)
    assert parts.generator_options["num_upsampling_layers"] == "more"
    batch = next(iter(eval_batches(cfg.data, parts.dataset, batch_size=1, split="val", limit=1)))
    real, cond = to_condition(batch, parts.num_classes, "cpu", with_edges=True, dontcare_last=parts.dontcare_last,
                              dontcare=parts.dataset.dontcare)
    assert cond.instance_edges is not None and cond.instance_edges.shape == (1, 1, 64, 128)
    assert 0 < cond.instance_edges.mean() < 0.5 and set(cond.instance_edges.unique().tolist()) <= {0.0, 1.0}
    torch.manual_seed(0)
    G, D = build_generator(parts), build_discriminator(parts)
    assert G.label_nc == parts.num_classes + 1  # SPADE's 35 + edge = 36 channels on Cityscapes
    G.eval()
    out = G(cond)
    assert out.image.shape == (1, 3, 64, 128) and torch.isfinite(out.image).all()
    losses = build_method(parts).g_losses(G, D, real, cond)
    assert set(losses) == {"G_adv", "feature-matching"} and all(math.isfinite(v.item()) for v in losses.values())
