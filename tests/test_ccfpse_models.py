"""CC-FPSE plugin networks: exact full-size parameter counts (meta device), the per-pixel depthwise convolution,
the block's order of operations, the FPSE score, tiny forward passes and the plugin contracts."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gensynth_ccfpse.plugin as ccfpse_plugin
from gensynth.interfaces import (Condition, DiscriminatorOutput, DOutputKind, GeneratorOutput, NoiseKind,
                                 StepContext, instance_edges, one_hot)
from gensynth_ccfpse.depthconv import depthwise_per_pixel, depthwise_shifted, depthwise_unfold
from gensynth_ccfpse.discriminator import FPSEDiscriminator, build_fpse
from gensynth_ccfpse.generator import CondConvGenerator, DepthsepCCBlock, build_cc_fpse_generator
from gensynth_ccfpse.losses import FPSEFeatureMatchingLoss, feature_matching_mean


def count(params) -> int:
    return sum(p.numel() for p in params)


def cond_for(n: int, b: int = 2, h: int = 64, w: int = 64, seed: int = 0, edges: bool = False,
             style: bool = False) -> Condition:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, n, (b, h // 8, w // 8), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
    inst = instance_edges(torch.randint(0, 3, (b, h, w), generator=g)) if edges else None
    img = torch.rand(b, 3, h, w, generator=g) * 2 - 1 if style else None
    return Condition(one_hot(ids, n), inst, img)


# ------------------------------------------------------------------------------------------------
# full-size parameter counts: the official code's (wave2-models-and-demos.md §1.9), exactly
# ------------------------------------------------------------------------------------------------
OFFICIAL = [  # dataset, classes (don't-care included), edges, (H, W), mode, G+VAE, G, FPSE D, E
    ("cityscapes", 35, True, (256, 512), "more", 128_055_555, 119_966_979, 5_175_873, 10_463_424),
    ("ade20k", 151, False, (256, 256), "normal", 140_704_323, 125_254_211, 5_190_593, 10_463_424),
    ("coco-stuff", 183, True, (256, 256), "normal", 141_939_843, 126_793_859, 5_194_817, 10_463_424),
]
UNUSED_BN = 26_112


@pytest.mark.parametrize("name,n,edges,size,mode,gv,g_count,d_count,e_count", OFFICIAL, ids=[o[0] for o in OFFICIAL])
def test_full_size_parameter_counts_equal_the_official_code(name, n, edges, size, mode, gv, g_count, d_count,
                                                            e_count):
    with torch.device("meta"):
        g = build_cc_fpse_generator(n, use_instance_edges=edges, num_upsampling_layers=mode)
        g_vae = build_cc_fpse_generator(n, use_instance_edges=edges, num_upsampling_layers=mode, use_vae=True,
                                        size=list(size))
        g_lean = build_cc_fpse_generator(n, use_instance_edges=edges, num_upsampling_layers=mode, unused_bn=False)
        d = build_fpse(n, use_instance_edges=edges)
    assert count(g.parameters()) == g_count
    assert count(g_vae.generator_parameters()) == gv
    assert count(g_vae.encoder.parameters()) == e_count
    assert count(d.parameters()) == d_count
    # the official never-applied BatchNorms: kept frozen by default, dropped with unused_bn=false
    frozen = [p for p in g.parameters() if not p.requires_grad]
    assert count(frozen) == UNUSED_BN
    assert count(g_lean.parameters()) == g_count - UNUSED_BN and all(p.requires_grad for p in g_lean.parameters())
    # spectral norm's u/v are buffers, not parameters
    assert "labelenc1.0.0.weight_u" in dict(g.named_buffers()) and "enc5.0.0.weight_v" in dict(d.named_buffers())


@pytest.mark.parametrize("name,n,edges,size,mode,gv,g_count,d_count,e_count", OFFICIAL, ids=[o[0] for o in OFFICIAL])
def test_models_describe_shows_the_official_counts(name, n, edges, size, mode, gv, g_count, d_count, e_count):
    from gensynth.cli.models_cmd import describe_preset

    info = describe_preset("cc-fpse", name)
    assert info["num_classes"] == n and tuple(info["size"]) == size
    assert info["generator_options"]["use_vae"] is True
    assert info["generator_options"]["num_upsampling_layers"] == mode
    assert info["generator_options"].get("use_instance_edges", False) == edges
    assert info["generator_own_parameters"] == gv
    assert info["style_encoder_parameters"] == e_count
    assert info["generator_parameters"] == gv + e_count
    assert info["generator_frozen_parameters"] == UNUSED_BN
    assert info["discriminator_parameters"] == d_count


def test_block_count_from_the_layer_formula():
    """One up block by hand: four predictors, two 1x1 convs, three used + three unused BNs, SPADE shortcut."""
    fin, fout, c, hid = 1024, 512, 151 + 64, 128
    with torch.device("meta"):
        blk = DepthsepCCBlock(fin, fout, c)

    def head(out):
        return c * hid * 9 + hid + hid * out * 9 + out

    predictors = head(fin * 9) + head(fout * 9) + head(fout) + head(fout)
    pointwise = fin * fout + fout + fout * fout + fout
    bns = 2 * (fin + fout) + 2 * (fout + fin + fout)  # norm_1, norm_2 used; norm_0, conv_0/2.norm_layer unused
    shortcut = fin * fout + (c * hid * 9 + hid) + 2 * (hid * fin * 9 + fin)
    assert count(blk.parameters()) == predictors + pointwise + bns + shortcut


# ------------------------------------------------------------------------------------------------
# the per-pixel depthwise convolution
# ------------------------------------------------------------------------------------------------
def reference_depthwise(x, k):
    """The definition, loop by loop: out[n,c,i,j] = sum_t k[n,9c+t,i,j] * xpad[n,c,i+t//3,j+t%3]."""
    n, c, h, w = x.shape
    xp = F.pad(x, (1, 1, 1, 1))
    out = torch.zeros_like(x)
    for ch in range(c):
        for t in range(9):
            dy, dx = divmod(t, 3)
            out[:, ch] += k[:, 9 * ch + t] * xp[:, ch, dy:dy + h, dx:dx + w]
    return out


def test_depthwise_implementations_agree_with_the_definition():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    k = torch.randn(2, 27, 5, 7, generator=g, dtype=torch.float64)
    ref = reference_depthwise(x, k)
    for fn in (depthwise_unfold, depthwise_shifted):
        assert torch.allclose(fn(x, k), ref, atol=1e-12)
    # kernels constant over the pixels: an ordinary depthwise conv (groups = C) with the c-major tap order
    w = torch.randn(3, 1, 3, 3, generator=g, dtype=torch.float64)
    k_const = w.view(1, 27, 1, 1).expand(2, 27, 5, 7)
    conv = F.conv2d(x, w, padding=1, groups=3)
    assert torch.allclose(depthwise_shifted(x, k_const), conv, atol=1e-12)
    assert torch.allclose(depthwise_unfold(x, k_const), conv, atol=1e-12)


def test_depthwise_gradients_agree():
    g = torch.Generator().manual_seed(1)
    grads = []
    for impl in ("unfold", "shifted"):
        x = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64).requires_grad_()
        k = torch.randn(1, 36, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64).requires_grad_()
        depthwise_per_pixel(x, k, impl).pow(2).sum().backward()
        grads.append((x.grad, k.grad))
    assert torch.allclose(grads[0][0], grads[1][0]) and torch.allclose(grads[0][1], grads[1][1])
    assert torch.autograd.gradcheck(depthwise_shifted, (torch.randn(1, 2, 3, 4, dtype=torch.float64, generator=g,
                                                                    requires_grad=True),
                                                        torch.randn(1, 18, 3, 4, dtype=torch.float64, generator=g,
                                                                    requires_grad=True)))


def test_depthwise_rejects_wrong_kernel_shapes_and_names():
    with pytest.raises(ValueError, match=r"kernels must be \(N, 9C, H, W\) = \(1, 18, 4, 4\).*got \(1, 9, 4, 4\)"):
        depthwise_shifted(torch.zeros(1, 2, 4, 4), torch.zeros(1, 9, 4, 4))
    with pytest.raises(ValueError, match="unknown implementation 'im2col'; known: shifted, unfold"):
        depthwise_per_pixel(torch.zeros(1, 1, 2, 2), torch.zeros(1, 9, 2, 2), "im2col")


# ------------------------------------------------------------------------------------------------
# the conditional-convolution block, step by step
# ------------------------------------------------------------------------------------------------
def test_block_follows_the_official_order_of_operations():
    torch.manual_seed(0)
    blk = DepthsepCCBlock(8, 4, 5, hidden=6).train()
    x, cond = torch.randn(2, 8, 8, 8), torch.randn(2, 5, 4, 4)
    out = blk(x, cond)
    c = F.interpolate(cond, size=(8, 8), mode="nearest")
    k1, k2 = blk.gen_weights1(c), blk.gen_weights2(c)
    s1, s2 = blk.gen_se_weights1(c), blk.gen_se_weights2(c)
    assert k1.shape == (2, 72, 8, 8) and k2.shape == (2, 36, 8, 8) and s1.shape == s2.shape == (2, 4, 8, 8)
    assert 0 < s1.min() and s1.max() < 1  # sigmoid gates

    def bn(t, m):  # train-mode BatchNorm with the module's affine parameters
        return F.batch_norm(t, None, None, m.weight, m.bias, training=True, eps=m.eps)

    dx = reference_depthwise(bn(x, blk.norm_1), k1)
    dx = F.leaky_relu(blk.conv_1(dx) * s1, 0.2)
    dx = reference_depthwise(bn(dx, blk.norm_2), k2)
    dx = F.leaky_relu(blk.conv_3(dx) * s2, 0.2)
    spade = blk.norm_s
    actv = spade.mlp_shared(c)
    xs = F.batch_norm(x, None, None, training=True, eps=spade.first_norm.eps) * (1 + spade.mlp_gamma(actv)) + spade.mlp_beta(actv)
    blk.conv_s.eval()  # the same u, v as the training call above (one power iteration already ran)
    expected = blk.conv_s(xs) + dx
    assert torch.allclose(out, expected, atol=1e-5)
    # the never-applied BatchNorms exist for the official keys and are frozen
    assert not any(p.requires_grad for m in (blk.norm_0, blk.conv_0.norm_layer, blk.conv_2.norm_layer)
                   for p in m.parameters())


def test_block_identity_shortcut_and_width_rule():
    blk = DepthsepCCBlock(8, 8, 3, hidden=4)
    assert not blk.learned_shortcut and not hasattr(blk, "conv_s")
    with pytest.raises(ValueError, match="needs fout <= fin.*fin=4, fout=8"):
        DepthsepCCBlock(4, 8, 3)


# ------------------------------------------------------------------------------------------------
# generator
# ------------------------------------------------------------------------------------------------
def test_generator_forward_shapes_values_and_label_dependence():
    torch.manual_seed(0)
    g = CondConvGenerator(5, ngf=4, hidden=8)
    assert g.noise == NoiseKind.NONE and g.z_dim == 0 and g.wants_sync_bn
    cond = cond_for(5, h=64, w=96)
    out = g(cond)
    assert isinstance(out, GeneratorOutput) and out.aux == {}
    assert out.image.shape == (2, 3, 64, 96)
    assert torch.isfinite(out.image).all() and out.image.abs().max() <= 1.0 and out.image.std() > 0
    g.eval()
    a = g(cond).image
    assert torch.equal(a, g(cond.labels).image)
    assert not torch.allclose(g(cond_for(5, h=64, w=96, seed=1)).image, a)
    pyramid = g.label_pyramid(cond.labels)
    assert [tuple(p.shape[-2:]) for p in pyramid] == [(2, 3), (4, 6), (8, 12), (16, 24), (32, 48), (64, 96)]


def test_generator_more_mode_and_instance_edges():
    g = CondConvGenerator(3, ngf=4, hidden=8, num_upsampling_layers="more", use_instance_edges=True)
    assert hasattr(g, "labelenc7") and hasattr(g, "labellat6") and hasattr(g, "labeldec6")
    assert g.labelenc1[0][0].in_channels == 4 and g.head_0.gen_weights1[0].in_channels == 4 + 4
    out = g(cond_for(3, h=64, w=128, edges=True))
    assert out.image.shape == (2, 3, 64, 128)
    assert len(g.label_pyramid(torch.zeros(1, 4, 64, 128))) == 7
    with pytest.raises(ValueError, match="uses instance edges"):
        g(cond_for(3, h=64, w=128))
    with pytest.raises(ValueError, match="multiple of 64; got 64x96"):
        g(cond_for(3, h=64, w=96, edges=True))


def test_generator_vae_encodes_the_style_image():
    torch.manual_seed(0)
    g = CondConvGenerator(4, ngf=4, hidden=8, use_vae=True, z_dim=8, size=(64, 64), encoder_size=32)
    assert g.noise == NoiseKind.VECTOR and g.uses_style_image and g.z_dim == 8
    assert isinstance(g.fc, torch.nn.Linear) and g.fc.out_features == 64 * 2 * 2
    out = g(cond_for(4, style=True))
    assert set(out.aux) == {"mu", "logvar"} and out.aux["mu"].shape == (2, 8)
    assert g(cond_for(4)).aux == {}  # no style image: z from the prior
    z = torch.randn(2, 8)
    g.eval()
    assert torch.equal(g(cond_for(4), z).image, g(cond_for(4), z).image)
    with pytest.raises(ValueError, match=r"z must be \(B, 8\)"):
        g(cond_for(4), torch.randn(2, 3))
    with pytest.raises(ValueError, match="VAE head was built for size 64x64"):
        g(cond_for(4, h=32, w=32))


def test_generator_initialisation_follows_the_official_code():
    torch.manual_seed(0)
    g = CondConvGenerator(5, ngf=8, hidden=16)
    bn = g.labelenc1[0][1]
    assert bn.weight.mean().item() == pytest.approx(1.0, abs=0.02) and 0.005 < bn.weight.std().item() < 0.05
    assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    w = g.up_0.gen_weights1[2].weight
    fan = w.shape[1] * 9 + w.shape[0] * 9
    assert w.std().item() == pytest.approx(0.02 * (2 / fan) ** 0.5, rel=0.1)  # xavier_normal, gain 0.02


# ------------------------------------------------------------------------------------------------
# FPSE discriminator
# ------------------------------------------------------------------------------------------------
def test_fpse_outputs_and_features():
    torch.manual_seed(0)
    d = FPSEDiscriminator(6, ndf=4)
    assert d.output_kind == DOutputKind.PATCH and d.takes_labels and d.provides_features and d.joint_real_fake
    out = d(torch.rand(3, 3, 64, 96) * 2 - 1, cond_for(6, b=3, h=64, w=96))
    assert isinstance(out, DiscriminatorOutput) and out.kind == DOutputKind.PATCH
    assert [tuple(x.shape) for x in out.logits] == [(3, 1, 16, 24), (3, 1, 8, 12), (3, 1, 4, 6)]
    shapes = [[tuple(f.shape) for f in scale] for scale in out.features]
    assert shapes == [[(3, 8, 16, 24)], [(3, 16, 8, 12)], [(3, 32, 4, 6), (3, 32, 2, 3)]]
    with pytest.raises(ValueError, match="multiple of 32 .*; got 48x64"):
        d(torch.zeros(1, 3, 48, 64), cond_for(6, b=1, h=48, w=64))
    with pytest.raises(ValueError, match="more than one pixel left at 1/32.*got 32x32"):
        d(torch.zeros(1, 3, 32, 32), cond_for(6, b=1, h=32, w=32))
    with pytest.raises(ValueError, match="needs the Condition"):
        d(torch.zeros(1, 3, 64, 64), None)


def test_fpse_score_is_the_logit_plus_the_label_projection():
    torch.manual_seed(0)
    d = FPSEDiscriminator(4, ndf=4).eval()
    image, cond = torch.rand(2, 3, 64, 64) * 2 - 1, cond_for(4, b=2)
    out = d(image, cond)
    e2 = d.enc2(d.enc1(image))
    e3 = d.enc3(e2)
    e4 = d.enc4(e3)
    e5 = d.enc5(e4)
    up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
    f4 = up(d.lat5(e5)) + d.lat4(e4)
    f3 = up(f4) + d.lat3(e3)
    f2 = up(f3) + d.lat2(e2)
    emb = d.embedding(cond.labels)
    for i, (final, f) in enumerate(((d.final2, f2), (d.final3, f3), (d.final4, f4))):
        x = final(f)
        e = F.avg_pool2d(emb, 2 ** (i + 2))  # 2x2 average pools repeated = one 2^k pool
        expected = d.tf(x) + (e * d.seg(x)).sum(1, keepdim=True)
        assert torch.allclose(out.logits[i], expected, atol=1e-5)
    # the image alone goes through the convolutions: the labels enter only through the embedding
    with torch.no_grad():
        d.embedding.weight.zero_()
        d.embedding.bias.zero_()
    flat = d(image, cond_for(4, b=2, seed=5))
    assert torch.allclose(flat.logits[0], d.tf(d.final2(f2)), atol=1e-5)


def test_fpse_feature_matching_averages_every_map():
    fake = [[torch.ones(1, 2, 2, 2)], [torch.zeros(1, 2, 1, 1)], [torch.full((1, 1, 1, 1), 3.0),
                                                                 torch.full((1, 1, 1, 1), -1.0)]]
    real = [[torch.zeros(1, 2, 2, 2)], [torch.zeros(1, 2, 1, 1)], [torch.zeros(1, 1, 1, 1),
                                                                 torch.zeros(1, 1, 1, 1)]]
    assert feature_matching_mean(fake, real).item() == pytest.approx((1 + 0 + 3 + 1) / 4)
    term = FPSEFeatureMatchingLoss()
    assert term.weight == 20 and term.needs_real_d_output and term.side == "G"
    ctx = StepContext(real=torch.zeros(1), fake=torch.zeros(1), cond=None, discriminator=None,
                      d_fake=DiscriminatorOutput(DOutputKind.PATCH, [], fake),
                      d_real=DiscriminatorOutput(DOutputKind.PATCH, [], real))
    assert term(ctx).item() == pytest.approx(1.25)
    ctx.d_real = None
    from gensynth.errors import ConfigError

    with pytest.raises(ConfigError, match="fpse-feature-matching"):
        term(ctx)


# ------------------------------------------------------------------------------------------------
# contracts
# ------------------------------------------------------------------------------------------------
def test_every_part_of_the_plugin_keeps_its_contracts():
    from gensynth.testing import assert_plugin_ok, plugin_host

    results = assert_plugin_ok(ccfpse_plugin, host=plugin_host(ccfpse_plugin))
    checked = {(r.kind, r.name, r.check) for r in results if r.status == "ok"}
    assert {("generator", "cc-fpse", "backward"), ("discriminator", "fpse", "objective"),
            ("discriminator", "fpse", "backward"), ("loss", "fpse-feature-matching", "step"),
            ("model", "cc-fpse", "resolves")} <= checked
