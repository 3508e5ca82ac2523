"""The dp-sims generator (gensynth_dpsims): shapes and noise, cross-attention noise that is exactly local, and local
re-sampling through the generation API and ``gensynth generate``. Tiny widths, 32x32 and 64x64 maps."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from gensynth.build import build_generator, resolve_parts
from gensynth.cli.main import cli
from gensynth.config import resolve
from gensynth.errors import ConfigError
from gensynth.generate.api import Synthesizer
from gensynth.interfaces import NoiseKind, one_hot

from gensynth_dpsims.attention import NoiseCrossAttention
from gensynth_dpsims.generator import DPSIMSGenerator, build_dpsims_generator

G = "model.generator_options.dp-sims."
TINY = dict(channels=4, num_res_blocks=3, z_dim=4, encoder_channels=4, encoder_max_channels=8, token_dim=8,
            noise_tokens=3, spade_hidden=8, norm="batch")


def tiny(num_classes=5, **options) -> DPSIMSGenerator:
    return build_dpsims_generator(num_classes, **{**TINY, **options})


def _scene(h=64, w=64) -> torch.Tensor:
    """(1, H, W) demo layout: sky (1) on top, water (4) below, a small tree (9) block near the top-left corner."""
    ids = torch.ones(1, h, w, dtype=torch.long)
    ids[:, h // 2:] = 4
    ids[:, 4:12, 4:12] = 9
    return ids


def test_shapes_noise_and_the_reported_z():
    torch.manual_seed(0)
    g = tiny(5)
    assert g.noise is NoiseKind.SPATIAL and g.z_dim == 4 and g.noise_scales == [2, 4]
    assert g.encoder.widths == [4, 8, 8] and g.widths == [32, 16, 8, 4]  # OASIS widths 8c, 4c, 2c, c
    labels = one_hot(torch.randint(0, 5, (2, 32, 48)), 5)
    out = g(labels)
    assert out.image.shape == (2, 3, 32, 48) and out.image.abs().max() <= 1
    assert out.aux["z"].shape == (2, 4)  # the noise it drew (the diversity term reuses it)
    z = torch.randn(2, 4)
    g.eval()
    torch.testing.assert_close(g(labels, z).image, g(labels, z).image)
    assert not torch.equal(g(labels, z).image, g(labels, torch.randn(2, 4)).image)
    assert g(labels, z[:, :, None, None].expand(2, 4, 32, 48)).aux == {}
    with pytest.raises(ValueError, match=r"z must be \(2, 4\) or \(2, 4, H, W\), got \(2, 3\)"):
        g(labels, torch.randn(2, 3))
    with pytest.raises(ConfigError, match="multiples of 4, got 30x48"):
        g(one_hot(torch.zeros(1, 30, 48, dtype=torch.long), 5))


def test_the_trunk_starts_from_the_low_resolution_label_map():
    """Two label maps with the same class fractions per 8x8 cell give the trunk the same input ('area')."""
    g = tiny(3, num_res_blocks=3)
    a = torch.zeros(1, 32, 32, dtype=torch.long)
    a[:, :, :16] = 1
    lab = one_hot(a, 3)
    low = g.lowres_labels(lab, g.start_size(32, 32))
    assert low.shape == (1, 3, 8, 8)
    torch.testing.assert_close(low[0, 1, 0], torch.tensor([1.0] * 4 + [0.0] * 4))
    b = a.clone()
    b[:, :, 14:18] = 2  # a thin stripe straddling cells 3 and 4: fractions 0.5
    low_b = g.lowres_labels(one_hot(b, 3), (8, 8))
    torch.testing.assert_close(low_b[0, 2, 0], torch.tensor([0, 0, 0, 0.5, 0.5, 0, 0, 0]))
    assert g.lowres_labels(one_hot(b, 3), (8, 8)).sum(1).allclose(torch.ones(1, 8, 8))


def test_global_noise_equals_the_same_vector_at_every_pixel():
    torch.manual_seed(0)
    g = tiny(5, noise_scales=[1, 2, 4], heads=2).eval()
    labels = one_hot(torch.randint(0, 5, (2, 32, 32)), 5)
    z = torch.randn(2, 4)
    flat = g(labels, z).image
    spatial = g(labels, z[:, :, None, None].expand(2, 4, 32, 32)).image
    torch.testing.assert_close(flat, spatial, rtol=1e-4, atol=1e-5)


def test_cross_attention_with_3d_noise_is_exactly_local():
    torch.manual_seed(0)
    attn = NoiseCrossAttention(channels=6, z_dim=4, tokens=5, dim=8, heads=2)
    f = torch.randn(1, 6, 7, 9)
    z = torch.randn(1, 4, 7, 9)
    z2 = z.clone()
    z2[:, :, 3, 4] = torch.randn(4)
    diff = (attn(f, z) - attn(f, z2)).abs().sum(1)[0]
    assert diff[3, 4] > 1e-3
    diff[3, 4] = 0
    assert torch.equal(diff, torch.zeros_like(diff))  # every other position is bit-identical
    # K tokens of width d per image from a noise vector
    assert attn.make_tokens(torch.randn(3, 4)).shape == (3, 5, 8)


def _synth(**options) -> Synthesizer:
    cfg, _ = resolve({"model.preset": "dp-sims", "data.name": "demo", "data.size": [64, 64],
                      **{G + k: v for k, v in {**TINY, **options}.items()}})
    parts = resolve_parts(cfg)
    torch.manual_seed(0)
    return Synthesizer(build_generator(parts), parts, size=(64, 64))


@pytest.mark.parametrize("scales,radius", [([1], 8), (None, 24)])
def test_resampling_a_region_changes_it_and_nothing_beyond_the_receptive_field(scales, radius):
    """Two re-samples of the tree's noise differ inside the tree; pixels farther than the layers after the noise
    injection can see (8 px with noise at full resolution, 24 px at scales 2 and 4 with 3 blocks) are identical."""
    syn = _synth(noise_scales=scales)
    ids = _scene()
    edit = syn.resample_region(ids, "tree", samples=2, seed=0)
    assert edit.samples.shape == (1, 2, 3, 64, 64)
    diff = (edit.samples[:, 0] - edit.samples[:, 1]).abs().amax(1)[0]
    mask = edit.mask[0]
    near = F.max_pool2d(mask[None, None].float(), 2 * radius + 1, 1, radius)[0, 0] > 0
    assert diff[mask].mean() > 1e-6
    assert (~near).sum() > 1000 and torch.equal(diff[~near], torch.zeros_like(diff[~near]))


def test_bad_noise_scales_are_named():
    with pytest.raises(ConfigError, match=r"noise_scales = \[8\]: with num_res_blocks=3 the label features exist at "
                                          r"scales \[1, 2, 4\]"):
        tiny(5, noise_scales=[8])
    cfg, _ = resolve({"model.preset": "dp-sims", "data.name": "demo", G + "noise_scales": [3]})
    with pytest.raises(ConfigError, match="powers of two"):
        resolve_parts(cfg)


@pytest.fixture(scope="module")
def dpsims_run(tmp_path_factory):
    """A tiny dp-sims trained 2 steps on 32x32 demo data with the CLI (checkpoint at step 2)."""
    root = tmp_path_factory.mktemp("dpsims-run")
    D = "model.discriminator_options.dp-sims."
    sets = {"data.size": [32, 32], "data.demo_samples": 8, "data.num_workers": 0, "data.cache_dir": str(root / "cache"),
            "trainer.batch_size": 2, "trainer.checkpoint_every": 2, "trainer.sample_every": 2,
            "trainer.bn_refresh_batches": 1, "trainer.run_dir": str(root / "run"),
            **{G + k: v for k, v in TINY.items()},
            D + "decoder_channels": [8, 8, 8, 8], D + "head_channels": 8}
    args = ["train", "--model", "dp-sims", "--data", "demo", "--steps", "2"]
    for k, v in sets.items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return root / "run"


def test_generate_cli_resamples_a_class_of_a_trained_dp_sims(dpsims_run, tmp_path):
    ids = torch.ones(32, 32, dtype=torch.long)
    ids[16:] = 4
    ids[8:16, 8:24] = 9
    Image.fromarray(ids.numpy().astype(np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "edit"
    r = CliRunner().invoke(cli, ["generate", "-c", str(dpsims_run), "-l", str(tmp_path / "a.png"), "-o", str(out),
                                 "--resample-class", "tree", "--samples", "2", "--seed", "1", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (out / "a_base.png").is_file() and (out / "a_resample01.png").is_file()
    assert np.asarray(Image.open(out / "a_resample01.png")).shape == (32, 32, 3)
    # the same edit through the API, before 8-bit rounding: the tree changes (2 steps: the noise's effect is small)
    syn = Synthesizer.from_checkpoint(dpsims_run)
    assert isinstance(syn.generator, DPSIMSGenerator) and syn.size_multiple == 4
    edit = syn.resample_region(ids[None], "tree", samples=2, seed=1)
    diff = (edit.samples[:, 0] - edit.samples[:, 1]).abs().amax(1)[0]
    assert diff[ids == 9].mean() > 1e-7
