"""DP-SIMS losses (gensynth_dpsims.losses): focal N+1 (gamma 0 == OASIS's n+1), PatchNCE and the mode-seeking
diversity term, on inputs whose values are known; and their use by other models through the registries."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from gensynth.build import build_discriminator, build_generator, build_method, resolve_parts
from gensynth.config import resolve
from gensynth.errors import IncompatibleError
from gensynth.interfaces import Condition, DiscriminatorOutput, DOutputKind, StepContext, one_hot
from gensynth.plugins import registry

from gensynth_dpsims.losses import DiversityLoss, FocalNPlusOneObjective, focal_ce, mode_seeking, patch_nce


def _out(logits):
    return DiscriminatorOutput(DOutputKind.PIXEL_CLASSES, logits)


@pytest.mark.parametrize("balancing,dontcare", [(True, 0), (False, 0), (True, None)])
def test_focal_with_gamma_zero_is_the_oasis_objective_exactly(balancing, dontcare):
    torch.manual_seed(0)
    n = 6
    ids = torch.randint(0, n, (3, 8, 10))
    cond = Condition(one_hot(ids, n), ids=ids)
    logits = torch.randn(3, n + 1, 8, 10) * 3
    oasis = registry("objectives").get("n+1")(dontcare=dontcare, balancing=balancing)
    focal = FocalNPlusOneObjective(dontcare=dontcare, gamma=0.0, balancing=balancing)
    for target in ("real", "fake"):
        assert torch.equal(focal.d_loss(_out(logits), cond, target), oasis.d_loss(_out(logits), cond, target))
    assert torch.equal(focal.g_loss(_out(logits), cond), oasis.g_loss(_out(logits), cond))
    assert focal.uninformative_loss(n) == pytest.approx(oasis.uninformative_loss(n))


def test_focal_values_on_a_known_pixel():
    # two classes; one pixel of class 0 (target channel 1) with logits [0, ln 3, -inf]: p_target = 3/4
    logits = torch.tensor([0.0, math.log(3.0), -1e9]).view(1, 3, 1, 1)
    ids = torch.zeros(1, 1, 1, dtype=torch.long)
    cond = Condition(one_hot(ids, 2), ids=ids)
    ce = math.log(4 / 3)
    for gamma in (0.0, 1.0, 2.0):
        obj = FocalNPlusOneObjective(dontcare=None, gamma=gamma)
        assert obj.d_loss(_out(logits), cond, "real").item() == pytest.approx((1 / 4) ** gamma * ce, rel=1e-5)
        assert obj.g_loss(_out(logits), cond).item() == pytest.approx((1 / 4) ** gamma * ce, rel=1e-5)
        # fake target channel 0: p = 1/4, CE = ln 4
        assert obj.d_loss(_out(logits), cond, "fake").item() == pytest.approx((3 / 4) ** gamma * math.log(4), rel=1e-5)
    plain_fake = FocalNPlusOneObjective(dontcare=None, gamma=2.0, focal_fake=False)
    assert plain_fake.d_loss(_out(logits), cond, "fake").item() == pytest.approx(math.log(4), rel=1e-5)
    assert FocalNPlusOneObjective(gamma=2.0).uninformative_loss(2) == pytest.approx((2 / 3) ** 2 * math.log(3))
    # the focal factor down-weights confident pixels: gradients stay finite at p -> 1
    confident = torch.tensor([0.0, 30.0, 0.0]).view(1, 3, 1, 1).requires_grad_(True)
    value = focal_ce(confident, torch.ones(1, 1, 1, dtype=torch.long), 2.0).sum()
    value.backward()
    assert value.item() < 1e-20 and torch.isfinite(confident.grad).all()


def test_focal_balancing_weights_the_rare_class_up():
    # ids [[0, 1, 1, 1]] with don't-care 0 -> weights [0, 1, 1, 1]; [[1, 2, 2, 2]] -> [2, 2/3, 2/3, 2/3]
    ids = torch.tensor([[[1, 2, 2, 2]]])
    logits = torch.zeros(1, 4, 1, 4)  # p = 1/4 everywhere
    obj = FocalNPlusOneObjective(dontcare=0, gamma=1.0)
    value = obj.d_loss(_out(logits), Condition(one_hot(ids, 3), ids=ids), "real")
    per_pixel = 0.75 * math.log(4)
    assert value.item() == pytest.approx((2 + 3 * 2 / 3) / 4 * per_pixel, rel=1e-6)


def test_patch_nce_values_on_orthonormal_features():
    # P locations with orthonormal features, fake == real: logits 1/tau on the diagonal, 0 elsewhere
    for p, tau in ((2, 1.0), (3, 1.0), (3, 0.5)):
        feats = torch.eye(p).view(1, p, 1, p)  # (B=1, C=p, h=1, w=p): location j has feature e_j
        expected = math.log(1 + (p - 1) * math.exp(-1 / tau))
        assert patch_nce(feats, feats, tau, num_patches=64).item() == pytest.approx(expected, rel=1e-6)
    # a fake whose features are permuted against the real's: the positive is now orthogonal
    feats = torch.eye(2).view(1, 2, 1, 2)
    swapped = feats.flip(-1)
    assert patch_nce(swapped, feats, 1.0, 64).item() == pytest.approx(math.log(1 + math.e), rel=1e-6)
    # scale does not matter (cosine similarity)
    assert patch_nce(5 * feats, feats, 1.0, 64).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


def test_patch_nce_samples_the_same_locations_in_fake_and_real():
    torch.manual_seed(0)
    real = torch.randn(2, 8, 16, 16)
    low = patch_nce(real, real, 0.07, num_patches=32, generator=torch.Generator().manual_seed(0))
    high = patch_nce(torch.randn(2, 8, 16, 16), real, 0.07, num_patches=32,
                     generator=torch.Generator().manual_seed(0))
    assert low.item() < 0.5 < high.item()


def test_mode_seeking_value():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.full((2, 3, 4, 4), 0.5)
    z1, z2 = torch.zeros(2, 8), torch.ones(2, 8) * 2
    assert mode_seeking(a, b, z1, z2, eps=1e-5).item() == pytest.approx(1 / (0.25 + 1e-5), rel=1e-6)
    assert mode_seeking(a, a, z1, z2, eps=1e-2).item() == pytest.approx(100.0, rel=1e-6)


def test_diversity_reuses_the_generators_sample_and_refuses_a_generator_without_noise():
    from gensynth_dpsims.generator import build_dpsims_generator

    torch.manual_seed(0)
    g = build_dpsims_generator(4, channels=4, num_res_blocks=2, z_dim=4, encoder_channels=4, encoder_max_channels=4,
                               token_dim=4, noise_tokens=2, spade_hidden=4, norm="batch").eval()  # fixed SN, BN
    calls = []

    class Counted(torch.nn.Module):  # the generator, counting its calls
        noise, z_dim = g.noise, g.z_dim

        def forward(self, cond, z=None):
            calls.append(z)
            return g(cond, z)

    counted = Counted()

    ids = torch.randint(0, 4, (2, 16, 16))
    cond = Condition(one_hot(ids, 4), ids=ids)
    gen = g(cond)
    ctx = StepContext(real=torch.zeros(2, 3, 16, 16), fake=gen.image, cond=cond, discriminator=None, gen=gen,
                      generator=counted)
    term = DiversityLoss()
    value = term(ctx)
    assert len(calls) == 1 and calls[0].shape == (2, 4)  # one more sample, not two
    assert torch.isfinite(value) and value.requires_grad
    other = g(cond, calls[0]).image
    expected = mode_seeking(gen.image, other, gen.aux["z"], calls[0])
    torch.testing.assert_close(value, expected)

    class NoNoise(torch.nn.Module):
        noise = "none"
        z_dim = 0

    ctx.generator = NoNoise()
    with pytest.raises(IncompatibleError, match="needs a generator that takes noise.*model.losses.diversity=0"):
        term(ctx)


def test_the_terms_switch_on_in_an_oasis_run_and_train():
    """Any model can use them: OASIS with the dp-sims discriminator, focal-n+1, patch-nce and diversity."""
    D = "model.discriminator_options.dp-sims."
    cfg, _ = resolve({"model.preset": "oasis", "data.name": "demo", "model.discriminator": "dp-sims",
                      "model.objective": "focal-n+1", "model.objective_options": {"gamma": 1.0},
                      "model.losses": {"patch-nce": 1.0, "diversity": 0.5},
                      "model.loss_options": {"patch-nce": {"temperature": 0.1, "num_patches": 16}},
                      "model.generator_options": {"channels": 8, "num_res_blocks": 4, "spade_hidden": 8,
                                                  "norm": "batch"},
                      D + "backbone": "test_convnext", D + "pretrained": False,
                      D + "decoder_channels": [8, 8, 8, 8], D + "head_channels": 8})
    parts = resolve_parts(cfg)
    assert parts.objective == "focal-n+1" and parts.objective_options["gamma"] == 1.0
    assert parts.losses == {"labelmix": 10.0, "patch-nce": 1.0, "diversity": 0.5}
    torch.manual_seed(0)
    G = build_generator(parts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        Dn = build_discriminator(parts)
    method = build_method(parts)
    ids = torch.randint(0, parts.num_classes, (2, 64, 64))
    cond = Condition(one_hot(ids, parts.num_classes), ids=ids)
    real = torch.rand(2, 3, 64, 64) * 2 - 1
    g = method.g_losses(G, Dn, real, cond)
    assert set(g) == {"G_adv", "patch-nce", "diversity"}
    assert g["diversity"].item() > 0 and 0 < g["patch-nce"].item() < 10
    sum(g.values()).backward()
    assert all(p.grad is not None for p in G.parameters() if p.requires_grad)


def test_patch_nce_needs_a_discriminator_with_features():
    cfg, _ = resolve({"model.preset": "oasis", "data.name": "demo", "model.losses": {"patch-nce": 1.0}})
    with pytest.raises(IncompatibleError) as err:
        resolve_parts(cfg)
    msg = str(err.value)
    assert "'patch-nce' needs discriminator intermediate features" in msg and "dp-sims" in msg.split("provides it:")[1]
