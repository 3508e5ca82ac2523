"""OASIS generator and discriminator: shapes, noise handling, official sizes and state-dict keys."""
from __future__ import annotations

import pytest
import torch

from gensynth.errors import ConfigError
from gensynth.interfaces import Condition, DOutputKind, NoiseKind, one_hot
from gensynth.nn.resample import UpsampleNearest
from gensynth_oasis.discriminator import OASISDiscriminator, ResidualBlockD, build_oasis_discriminator
from gensynth_oasis.generator import OASISGenerator, build_oasis_generator, generator_widths

N = 5
TINY_G = dict(channels=2, num_res_blocks=3, z_dim=4, spade_hidden=8)
TINY_D = dict(num_res_blocks=3, width=1 / 32)


def labels(b=2, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return one_hot(torch.randint(0, N, (b, h, w), generator=g), N)


@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(0)
    return build_oasis_generator(N, **TINY_G).eval()


# ---------------------------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("classes,g_count,d_count", [
    (35, 71_107_523, 22_251_364), (151, 74_314_691, 22_258_904), (183, 75_199_427, 22_260_984)])
def test_full_size_parameter_counts_match_official(classes, g_count, d_count):
    with torch.device("meta"):
        g = build_oasis_generator(classes)
        d = build_oasis_discriminator(classes)
    assert sum(p.numel() for p in g.parameters()) == g_count
    assert sum(p.numel() for p in d.parameters()) == d_count
    assert len(g.state_dict()) == 208 and len(d.state_dict()) == 130
    assert g.widths == [1024, 1024, 1024, 512, 256, 128, 64]
    assert d.channels == [3, 128, 128, 256, 256, 512, 512]


def test_official_state_dict_keys_and_shapes():
    with torch.device("meta"):
        g = build_oasis_generator(35)
        d = build_oasis_discriminator(35)
    sg, sd = g.state_dict(), d.state_dict()
    assert sg["fc.weight"].shape == (1024, 64 + 35, 3, 3)
    assert sg["body.0.norm_0.mlp_shared.0.weight"].shape == (128, 99, 3, 3)
    for i in range(6):
        for c in ("conv_0", "conv_1"):
            assert {f"body.{i}.{c}.{k}" for k in ("bias", "weight_orig", "weight_u", "weight_v")} <= set(sg)
        assert (f"body.{i}.conv_s.weight_orig" in sg) == (i in (2, 3, 4, 5))
        assert f"body.{i}.norm_0.first_norm.num_batches_tracked" in sg
    assert "body.2.conv_s.bias" not in sg
    assert not any(k.startswith(("fc.weight_", "conv_img.weight_")) for k in sg)
    assert not any("mlp" in k and "weight_orig" in k for k in sg)
    assert "body_down.0.conv1.0.weight_orig" in sd and "body_down.1.conv1.1.weight_orig" in sd
    assert "body_up.3.conv1.2.weight_orig" in sd and "body_up.1.conv_s.bias" in sd
    assert {f"body_down.{i}.conv_s.bias" in sd for i in range(6)} == {True, False}
    assert [i for i in range(6) if f"body_down.{i}.conv_s.bias" in sd] == [0, 2, 4]
    assert sd["layer_up_last.weight"].shape == (36, 64, 1, 1)
    assert "layer_up_last.weight_orig" not in sd


def test_generator_widths_for_other_depths():
    assert generator_widths(2, 3) == [16, 8, 4, 2]
    assert generator_widths(1, 7) == [16, 16, 16, 16, 8, 4, 2, 1]


# ---------------------------------------------------------------------------------------------- generator
def test_generator_output_shape_range_and_z_handling(gen):
    lab = labels()
    z = torch.randn(2, 4)
    with torch.no_grad():
        a = gen(lab, z).image
        b = gen(Condition(lab), z.clone()).image
        c = gen(lab, torch.randn(2, 4)).image
        d = gen(lab).image
    assert a.shape == (2, 3, 16, 16)
    assert a.abs().max() <= 1.0
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-6 and (a - d).abs().max() > 1e-6
    # a (B, z, H, W) map of a broadcast vector equals the vector; a smaller map is resized nearest
    zmap = z[:, :, None, None].expand(2, 4, 4, 4).contiguous()
    with torch.no_grad():
        torch.testing.assert_close(gen(lab, zmap).image, a, rtol=0, atol=1e-6)
    # spatial noise: re-sampling z in the left quarter changes mostly the left quarter (after the BN statistics
    # are estimated, so that eval-mode activations are not saturated)
    g = build_oasis_generator(N, **TINY_G)
    with torch.no_grad():
        for _ in range(10):
            g(lab)
    g.eval()
    z2 = zmap.clone()
    z2[..., :1] = torch.randn(2, 4, 4, 1)
    with torch.no_grad():
        diff = (g(lab, z2).image - g(lab, zmap).image).abs()
    assert diff[..., :4].mean() > 2 * diff[..., 12:].mean() > 0


def test_generator_sample_noise_and_rejects_bad_input(gen):
    assert gen.noise == NoiseKind.SPATIAL and gen.z_dim == 4
    assert gen.sample_noise(3).shape == (3, 4)
    with pytest.raises(ValueError, match=r"z must be \(2, 4\)"):
        gen(labels(), torch.randn(2, 5))
    with pytest.raises(ValueError, match="built for 5 classes"):
        gen(one_hot(torch.zeros(1, 16, 16, dtype=torch.long), 6))
    with pytest.raises(ConfigError, match="multiples of 4, got 18x16"):
        gen(labels(h=18))


def test_generator_without_3d_noise_is_deterministic():
    torch.manual_seed(1)
    g = build_oasis_generator(N, **{**TINY_G, "use_3d_noise": False}).eval()
    assert g.noise == NoiseKind.NONE and g.z_dim == 0 and g.sample_noise(2) is None
    assert g.fc.weight.shape[1] == N
    lab = labels()
    with torch.no_grad():
        torch.testing.assert_close(g(lab).image, g(lab).image, rtol=0, atol=0)
    with pytest.raises(ValueError, match="use_3d_noise=False"):
        g(lab, torch.randn(2, 4))


def test_generator_noise_channels_come_first(gen):
    """Zeroing the label part of fc's input weights must make fc blind to labels, not to noise."""
    g = build_oasis_generator(N, **TINY_G)
    with torch.no_grad():
        g.fc.weight[:, 4:] = 0
        x1 = g.fc(torch.cat([torch.ones(1, 4, 2, 2), labels(1, 2, 2)], 1))
        x2 = g.fc(torch.cat([torch.ones(1, 4, 2, 2), labels(1, 2, 2, seed=3)], 1))
    torch.testing.assert_close(x1, x2)


def test_generator_norm_options():
    g = build_oasis_generator(N, **TINY_G, norm="instance")
    assert isinstance(g.body[0].norm_0.first_norm, torch.nn.InstanceNorm2d) and not g.wants_sync_bn
    assert build_oasis_generator(N, **TINY_G).wants_sync_bn  # default: official syncbatch
    assert not build_oasis_generator(N, **TINY_G, norm="batch").wants_sync_bn


# ---------------------------------------------------------------------------------------------- discriminator
def test_discriminator_outputs_n_plus_1_logits_at_full_resolution():
    torch.manual_seed(0)
    d = build_oasis_discriminator(N, **TINY_D)
    assert isinstance(d, OASISDiscriminator) and d.output_kind == DOutputKind.PIXEL_CLASSES
    out = d(torch.rand(2, 3, 16, 24) * 2 - 1)
    assert out.kind == DOutputKind.PIXEL_CLASSES and out.logits.shape == (2, N + 1, 16, 24)
    assert torch.isfinite(out.logits).all() and out.logits.std() > 0
    with pytest.raises(ConfigError, match="multiples of 8, got 12x16"):
        d(torch.zeros(1, 3, 12, 16))


def test_discriminator_pixels_depend_on_their_neighbourhood_only_locally():
    """A U-Net at full resolution: changing one corner changes the far corner much less."""
    torch.manual_seed(0)
    d = build_oasis_discriminator(N, num_res_blocks=2, width=1 / 16).eval()
    x = torch.rand(1, 3, 32, 32)
    y = x.clone()
    y[..., :4, :4] = -1
    diff = (d(x).logits - d(y).logits).abs()
    assert diff[..., :4, :4].mean() > 10 * diff[..., 24:, 24:].mean()


def test_residual_block_d_shapes_and_shortcuts():
    x = torch.randn(1, 4, 8, 8)
    down = ResidualBlockD(4, 6, -1, first=True)
    assert down(x).shape == (1, 6, 4, 4) and len(down.conv1) == 1
    assert ResidualBlockD(4, 4, -1)(x).shape == (1, 4, 4, 4)
    up = ResidualBlockD(4, 2, 1)
    assert up(x).shape == (1, 2, 16, 16) and isinstance(up.conv1[1], UpsampleNearest)
    assert not hasattr(ResidualBlockD(4, 4, 1), "conv_s")
    with pytest.raises(ValueError, match="up_or_down"):
        ResidualBlockD(4, 4, 0)


def test_discriminator_options_validate_widths():
    assert build_oasis_discriminator(3, num_res_blocks=3, channels=[3, 8, 8, 16]).channels == [3, 8, 8, 16]
    with pytest.raises(ConfigError, match="needs 5"):
        build_oasis_discriminator(3, num_res_blocks=4, channels=[3, 8, 8, 16])
    with pytest.raises(ConfigError, match="must start with 3"):
        build_oasis_discriminator(3, num_res_blocks=2, channels=[4, 8, 8])


# ---------------------------------------------------------------------------------------------- plugin / preset
def test_plugin_registers_parts_and_preset_resolves_for_demo():
    from gensynth.build import build_discriminator, build_generator, build_method, resolve_parts
    from gensynth.config import resolve

    cfg, prov = resolve({"model.preset": "oasis", "data.name": "demo"})
    parts = resolve_parts(cfg)
    assert (parts.generator, parts.discriminator, parts.objective) == ("oasis", "oasis-unet", "n+1")
    assert parts.losses == {"labelmix": 10.0}
    assert (cfg.optim.beta1, cfg.optim.beta2, cfg.optim.lr_d) == (0.0, 0.999, 4e-4)
    assert cfg.trainer.batch_size == 8 and cfg.trainer.steps and cfg.trainer.ema_decay == 0.999
    g, d = build_generator(parts), build_discriminator(parts)
    assert isinstance(g, OASISGenerator) and isinstance(d, OASISDiscriminator)
    method = build_method(parts)
    assert method.objective.dontcare == 0 and method.objective.balancing
    assert [t.weight for t in method.terms] == [10.0]
    # one real D+G step of the demo model on demo-sized input
    lab = one_hot(torch.randint(0, parts.num_classes, (2, 64, 64)), parts.num_classes)
    real = torch.rand(2, 3, 64, 64) * 2 - 1
    dl = method.d_losses(g, d, real, Condition(lab))
    gl = method.g_losses(g, d, real, Condition(lab))
    assert set(dl) == {"D_fake", "D_real", "labelmix"} and set(gl) == {"G_adv"}
    assert all(torch.isfinite(v) for v in [*dl.values(), *gl.values()])


@pytest.mark.parametrize("data,values,expect", [
    ("cityscapes", "official", {"lr_g": 4e-4, "labelmix": 5.0, "ema": 0.999, "bs": 20, "epochs": 200}),
    ("ade20k", "official", {"lr_g": 1e-4, "labelmix": 10.0, "ema": 0.9999, "bs": 32, "epochs": 200}),
    ("coco-stuff", "official", {"lr_g": 1e-4, "labelmix": 10.0, "ema": 0.9999, "bs": 32, "epochs": 100}),
    ("cityscapes", "paper", {"lr_g": 1e-4, "labelmix": 5.0, "ema": 0.9999, "bs": 20, "epochs": 200}),
    ("ade20k", "paper", {"lr_g": 1e-4, "labelmix": 5.0, "ema": 0.9999, "bs": 32, "epochs": 200}),
])
def test_preset_dataset_defaults(data, values, expect):
    from gensynth.build import resolve_parts
    from gensynth.config import resolve
    from gensynth.plugins import get_host

    if data not in get_host().registry("datasets"):
        pytest.skip(f"dataset {data} not registered yet")
    cfg, _ = resolve({"model.preset": "oasis", "data.name": data, "model.values": values})
    parts = resolve_parts(cfg)
    got = {"lr_g": cfg.optim.lr_g, "labelmix": parts.losses["labelmix"], "ema": cfg.trainer.ema_decay,
           "bs": cfg.trainer.batch_size, "epochs": cfg.trainer.epochs}
    assert got == expect
