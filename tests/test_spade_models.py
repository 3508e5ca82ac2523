"""SPADE plugin networks: full-size parameter counts (meta device), tiny forward passes, encoder, losses."""
from __future__ import annotations

import math

import pytest
import torch

from gensynth.builtin import HingeObjective
from gensynth.errors import ConfigError
from gensynth.interfaces import (Condition, DiscriminatorOutput, DOutputKind, GeneratorOutput, NoiseKind,
                                 StepContext, instance_edges, one_hot)
from gensynth_spade.discriminator import PatchGANDiscriminator, build_patchgan, build_patchgan_single
from gensynth.nn.vae import ConvEncoder, reparameterize
from gensynth_spade.generator import SpadeGenerator, build_spade_generator
from gensynth_spade.losses import FeatureMatchingLoss, KLDLoss, feature_matching, kl_divergence


def count(params) -> int:
    return sum(p.numel() for p in params)


def cond_for(n: int, b: int = 2, h: int = 32, w: int = 32, seed: int = 0, edges: bool = False) -> Condition:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, n, (b, h // 8, w // 8), generator=g)
    ids = ids.repeat_interleave(8, 1).repeat_interleave(8, 2)  # blocky label map
    inst = torch.randint(0, 3, (b, h, w), generator=g) if edges else None
    return Condition(one_hot(ids, n), instance_edges(inst) if edges else None)


# ------------------------------------------------------------------------------------------------
# full-size parameter counts against the official SPADE code (baselines.md 1.3), on the meta device
# ------------------------------------------------------------------------------------------------
OFFICIAL = [  # name, classes (incl. don't-care), edges, (H, W), upsampling, G, G with VAE, D (2 scales)
    ("ade20k", 151, False, (256, 256), "normal", 96.49, 111.94, 5.84),
    ("coco-stuff", 183, True, (256, 256), "normal", 97.48, 112.63, 5.90),
    ("cityscapes", 35, True, (256, 512), "more", 93.05, 101.14, 5.60),
]


@pytest.mark.parametrize("name,n,edges,size,up,g_m,gv_m,d_m", OFFICIAL, ids=[o[0] for o in OFFICIAL])
def test_full_size_parameter_counts(name, n, edges, size, up, g_m, gv_m, d_m):
    with torch.device("meta"):
        g = build_spade_generator(n, use_instance_edges=edges, num_upsampling_layers=up)
        gv = build_spade_generator(n, use_instance_edges=edges, num_upsampling_layers=up, use_vae=True,
                                   size=list(size))
        d = build_patchgan(n, use_instance_edges=edges)
    assert round(count(g.parameters()) / 1e6, 2) == g_m
    assert round(count(gv.generator_parameters()) / 1e6, 2) == gv_m
    assert round(count(gv.encoder.parameters()) / 1e6, 2) == 10.46
    assert round(count(d.parameters()) / 1e6, 2) == d_m
    # spectral norm's u/v are buffers, not parameters
    assert any(k.endswith("weight_u") for k in dict(g.named_buffers()))
    # the VAE changes only the first layer: Linear(256 -> 16*64*sh*sw) instead of conv3x3(label_nc -> 1024)
    sh, sw = size[0] // 2 ** (5 if up == "normal" else 6), size[1] // 2 ** (5 if up == "normal" else 6)
    label_nc = n + edges
    diff = (256 * 1024 * sh * sw + 1024 * sh * sw) - (label_nc * 1024 * 9 + 1024)
    assert count(gv.generator_parameters()) - count(g.parameters()) == diff


def test_discriminator_count_matches_the_layer_formula():
    """D count derived by hand from the layer description (kernel 4; conv biases only where no norm)."""
    n = 151
    with torch.device("meta"):
        d = build_patchgan(n)
        single = build_patchgan_single(n)
    in_c = n + 3
    per_scale = (in_c * 64 * 16 + 64) + 64 * 128 * 16 + 128 * 256 * 16 + 256 * 512 * 16 + (512 * 16 + 1)
    assert count(d.parameters()) == 2 * per_scale
    assert count(single.parameters()) == per_scale
    assert len(single.scales) == 1


def test_encoder_count_from_layer_formula():
    with torch.device("meta"):
        e = ConvEncoder(ngf=64, image_size=256)
    convs = 3 * 64 * 9 + 64 * 128 * 9 + 128 * 256 * 9 + 256 * 512 * 9 + 2 * 512 * 512 * 9  # no bias (instance norm)
    heads = 2 * (512 * 16 * 256 + 256)
    assert count(e.parameters()) == convs + heads


# ------------------------------------------------------------------------------------------------
# generator
# ------------------------------------------------------------------------------------------------
def test_generator_forward_shapes_values_and_determinism():
    torch.manual_seed(0)
    g = SpadeGenerator(5, ngf=4)
    assert g.noise == NoiseKind.NONE and g.z_dim == 0 and g.sample_noise(2) is None
    assert g.wants_sync_bn and isinstance(g.head_0.norm_0.first_norm, torch.nn.BatchNorm2d)
    cond = cond_for(5, h=32, w=64)
    out = g(cond)
    assert isinstance(out, GeneratorOutput) and out.aux == {}
    assert out.image.shape == (2, 3, 32, 64)
    assert torch.isfinite(out.image).all() and out.image.abs().max() <= 1.0
    assert out.image.std() > 0
    g.eval()
    a, b = g(cond).image, g(cond.labels).image  # bare one-hot tensors are accepted too
    assert torch.equal(a, b)
    other = cond_for(5, h=32, w=64, seed=1)
    assert not torch.allclose(g(other).image, a)


@pytest.mark.parametrize("mode,size", [("more", (64, 128)), ("most", (128, 128))])
def test_generator_upsampling_modes(mode, size):
    g = SpadeGenerator(3, ngf=4, num_upsampling_layers=mode, spade_hidden=8)
    assert g.up_0.norm_0.mlp_shared[0].out_channels == 8 and g.up_0.norm_0.mlp_gamma.out_channels == 64
    out = g(cond_for(3, b=2, h=size[0], w=size[1]))
    assert out.image.shape == (2, 3, *size)
    assert hasattr(g, "up_4") == (mode == "most")
    assert g.conv_img.in_channels == (2 if mode == "most" else 4)


def test_generator_rejects_sizes_not_divisible():
    g = SpadeGenerator(3, ngf=4)
    with pytest.raises(ValueError, match="multiple of 32; got 48x40"):
        g(cond_for(3, h=48, w=40))
    with pytest.raises(ValueError, match="built for 3 label channels"):
        g(cond_for(4))
    with pytest.raises(ConfigError, match="model.generator_options.num_upsampling_layers"):
        from gensynth.options import validate_part_options
        from gensynth.registry import Entry
        from gensynth_spade.generator import SpadeGeneratorOptions

        validate_part_options(Entry("spade", None, "spade", options=SpadeGeneratorOptions),
                              {"num_upsampling_layers": "many"}, "generator")


def test_generator_instance_edges_are_an_extra_channel():
    torch.manual_seed(0)
    g = SpadeGenerator(4, ngf=4, use_instance_edges=True).eval()
    assert g.uses_instance_edges and g.head_0.norm_0.mlp_shared[0].in_channels == 5
    cond = cond_for(4, edges=True)
    seg = g.segmap(cond)
    assert torch.equal(seg[:, :4], cond.labels) and torch.equal(seg[:, 4:], cond.instance_edges)
    no_edges = Condition(cond.labels, torch.zeros_like(cond.instance_edges))
    assert not torch.allclose(g(cond).image, g(no_edges).image)
    with pytest.raises(ValueError, match="uses instance edges"):
        g(Condition(cond.labels))


def test_generator_vae_noise_and_style_encoding():
    torch.manual_seed(0)
    g = SpadeGenerator(3, ngf=4, use_vae=True, size=(32, 32), encoder_size=32, z_dim=16)
    assert g.noise == NoiseKind.VECTOR and g.z_dim == 16 and g.uses_style_image
    assert isinstance(g.fc, torch.nn.Linear) and g.fc.out_features == 64 * 1 * 1
    cond = cond_for(3)
    # no style image, no z: z ~ N(0, I), no aux
    out = g(cond)
    assert out.image.shape == (2, 3, 32, 32) and out.aux == {}
    # an explicit z makes the output a function of z
    g.eval()
    z = g.sample_noise(2, generator=torch.Generator().manual_seed(3))
    assert z.shape == (2, 16)
    assert torch.equal(g(cond, z).image, g(cond, z.clone()).image)
    assert not torch.allclose(g(cond, z).image, g(cond, -z).image)
    # with a style image: mu/logvar from the encoder
    style = torch.rand(2, 3, 32, 32) * 2 - 1
    out = g(Condition(cond.labels, None, style))
    mu, logvar = g.encode(style)
    assert set(out.aux) == {"mu", "logvar"} and out.aux["mu"].shape == (2, 16)
    assert torch.allclose(out.aux["mu"], mu) and torch.allclose(out.aux["logvar"], logvar)
    with pytest.raises(ValueError, match="z must be"):
        g(cond, torch.zeros(2, 8))
    with pytest.raises(ValueError, match="built for size 32x32"):
        g(cond_for(3, h=64, w=64))


def test_encoder_heads_and_reparameterization_by_hand():
    torch.manual_seed(0)
    e = ConvEncoder(ngf=4, z_dim=3, image_size=16)
    assert len(e.layers) == 2  # 16 -> 8 -> 4
    x = torch.rand(2, 3, 40, 24) * 2 - 1  # resized to 16x16 (bilinear) whatever its size
    with torch.no_grad():
        e.fc_mu.weight.zero_(); e.fc_mu.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
        e.fc_var.weight.zero_(); e.fc_var.bias.copy_(torch.tensor([0.0, math.log(4.0), -math.log(4.0)]))
    mu, logvar = e(x)
    assert torch.allclose(mu, torch.tensor([[0.5, -1.0, 2.0]] * 2))
    eps = torch.randn(2, 3, generator=torch.Generator().manual_seed(7))
    z = reparameterize(mu, logvar, generator=torch.Generator().manual_seed(7))
    expected = mu + eps * torch.tensor([1.0, 2.0, 0.5])  # std = exp(logvar / 2)
    assert torch.allclose(z, expected)
    with pytest.raises(ValueError, match="power of two"):
        ConvEncoder(image_size=48)


# ------------------------------------------------------------------------------------------------
# discriminator
# ------------------------------------------------------------------------------------------------
def _conv_out(n: int, stride: int) -> int:
    return (n + 2 * 2 - 4) // stride + 1


def test_patchgan_outputs_features_and_label_first_input():
    torch.manual_seed(0)
    d = PatchGANDiscriminator(4, ndf=8)
    assert d.output_kind == DOutputKind.PATCH and d.takes_labels and d.joint_real_fake and d.provides_features
    cond = cond_for(4, b=3, h=64, w=64)
    img = torch.rand(3, 3, 64, 64) * 2 - 1
    x = d.inputs(img, cond)
    assert x.shape[1] == 7 and torch.equal(x[:, :4], cond.labels) and torch.equal(x[:, 4:], img)
    out = d(img, cond)
    assert out.kind == DOutputKind.PATCH and len(out.logits) == 2 and len(out.features) == 2
    for scale, size in enumerate((64, 32)):
        s = size
        for stride in (2, 2, 2, 1, 1):
            s = _conv_out(s, stride)
        assert out.logits[scale].shape == (3, 1, s, s)
        assert [f.shape[1] for f in out.features[scale]] == [8, 16, 32, 64]
    # features are the intermediate outputs; the final prediction is the conv of the last one
    final = d.scales[0].blocks[-1](out.features[0][-1])
    assert torch.allclose(final, out.logits[0])
    # joint real/fake call splits back per part
    fake_part, real_part = out.split([1, 2])
    assert fake_part.logits[1].shape[0] == 1 and real_part.features[0][2].shape[0] == 2
    # the labels matter
    other = d(img, cond_for(4, b=3, h=64, w=64, seed=5))
    assert not torch.allclose(other.logits[0], out.logits[0])
    with pytest.raises(ValueError, match="needs the Condition"):
        d(img)


def test_patchgan_instance_edges_channel():
    d = PatchGANDiscriminator(4, ndf=8, use_instance_edges=True, num_D=1)
    cond = cond_for(4, edges=True)
    img = torch.zeros(2, 3, 32, 32)
    x = d.inputs(img, cond)
    assert x.shape[1] == 8 and torch.equal(x[:, 4:5], cond.instance_edges)
    assert len(d(img, cond).logits) == 1
    with pytest.raises(ValueError, match="uses instance edges"):
        d(img, Condition(cond.labels))


# ------------------------------------------------------------------------------------------------
# objective and loss terms
# ------------------------------------------------------------------------------------------------
def test_hinge_on_patch_outputs_by_hand():
    out = DiscriminatorOutput(DOutputKind.PATCH, [torch.tensor([[[[2.0, -0.5]]]]), torch.tensor([[[[0.0]]]])])
    h = HingeObjective()
    cond = Condition(torch.zeros(1, 2, 1, 1))
    # real: mean relu(1 - x): scale0 (0 + 1.5)/2 = 0.75, scale1 1.0 -> (0.75 + 1) / 2
    assert h.d_loss(out, cond, "real").item() == pytest.approx(0.875)
    # fake: mean relu(1 + x): scale0 (3 + 0.5)/2 = 1.75, scale1 1 -> 1.375
    assert h.d_loss(out, cond, "fake").item() == pytest.approx(1.375)
    # G: -mean x: scale0 -0.75, scale1 0 -> -0.375
    assert h.g_loss(out, cond).item() == pytest.approx(-0.375)


def test_feature_matching_by_hand_and_detached_real():
    fake = [[torch.ones(1, 2, 2, 2, requires_grad=True), torch.zeros(1, 1, 3, 3, requires_grad=True)],
            [torch.full((1, 2, 1, 1), 3.0, requires_grad=True), torch.zeros(1, 1, 1, 1, requires_grad=True)]]
    real = [[torch.zeros(1, 2, 2, 2, requires_grad=True), torch.full((1, 1, 3, 3), 2.0, requires_grad=True)],
            [torch.ones(1, 2, 1, 1, requires_grad=True), torch.full((1, 1, 1, 1), -1.0, requires_grad=True)]]
    # scale 0: |1-0| + |0-2| = 3; scale 1: |3-1| + |0+1| = 3; / num_D 2 -> 3
    loss = feature_matching(fake, real)
    assert loss.item() == pytest.approx(3.0)
    loss.backward()
    assert fake[0][0].grad is not None and all(r.grad is None for s in real for r in s)
    term = FeatureMatchingLoss()
    assert term.weight == 10 and term.side == "G" and term.needs_real_d_output
    ctx = StepContext(real=torch.zeros(1), fake=torch.zeros(1), cond=None, discriminator=None,
                      d_fake=DiscriminatorOutput(DOutputKind.PATCH, [], fake),
                      d_real=DiscriminatorOutput(DOutputKind.PATCH, [], real))
    assert term(ctx).item() == pytest.approx(3.0)
    ctx.d_real = None
    with pytest.raises(ConfigError, match="feature-matching"):
        term(ctx)


def test_kl_by_hand():
    mu = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    # -0.5 * sum(1 + lv - mu^2 - e^lv): (0) + (1 + ln2 - 1 - 2) + (1 - 4 - 1) + 0 = ln2 - 6
    expected = -0.5 * (math.log(2.0) - 6.0)
    assert kl_divergence(mu, logvar).item() == pytest.approx(expected)
    term = KLDLoss()
    assert term.weight == pytest.approx(0.05) and term.side == "G"
    ctx = StepContext(real=torch.zeros(1), fake=torch.zeros(1), cond=None, discriminator=None,
                      gen=GeneratorOutput(torch.zeros(1), {"mu": mu, "logvar": logvar}))
    assert term(ctx).item() == pytest.approx(expected)
    ctx.gen = GeneratorOutput(torch.zeros(1))
    with pytest.raises(ConfigError, match="needs the generator's mu and logvar"):
        term(ctx)
