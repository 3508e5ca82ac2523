"""Swapping discriminators across models: every listed combination trains 2 steps; incompatible ones are
rejected before anything is built, with a message that says why and what would work.

Everything goes through the real path: gensynth.config.resolve -> gensynth.build.resolve_parts ->
build_generator / build_discriminator / build_method -> method.g_losses / d_losses + backward + Adam.
Tiny widths, random 64x64 data of the demo dataset's 11 classes.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from gensynth.build import build_discriminator, build_generator, build_method, resolve_parts
from gensynth.config import resolve
from gensynth.errors import IncompatibleError
from gensynth.interfaces import Condition, one_hot

G_TINY = {
    "oasis": {"channels": 8, "num_res_blocks": 4, "spade_hidden": 8, "norm": "batch"},
    "spade": {"ngf": 4},
    "cc-fpse": {"ngf": 4, "hidden": 8},
}
D_TINY = {
    "oasis-unet": {"num_res_blocks": 4, "width": 0.125},
    "oasis-unet-concat": {"num_res_blocks": 4, "width": 0.125},
    "oasis-unet-projection": {"num_res_blocks": 4, "width": 0.125},
    "oasis-encoder": {"num_res_blocks": 4, "width": 0.125},
    "patchgan": {"ndf": 8},
    "patchgan-single": {"ndf": 8},
    "timm-unet": {"backbone": "test_resnet", "decoder_channels": [8, 8, 16, 16, 16], "head_channels": 8},
    "dp-sims": {"dp-sims": {"backbone": "test_convnext", "pretrained": False, "decoder_channels": [8, 8, 8, 8],
                            "head_channels": 8}},
    "fpse": {"ndf": 4},
}
PRESET_G = {"oasis": "oasis", "spade": "spade", "spade+": "spade", "cc-fpse": "cc-fpse"}
PRESET_D = {"oasis": "oasis-unet", "spade": "patchgan", "spade+": "patchgan", "cc-fpse": "fpse"}


def config(preset: str, discriminator: str | None = None, **extra):
    d_name = discriminator or PRESET_D[preset]
    cli = {"model.preset": preset, "data.name": "demo",
           "model.generator_options": dict(G_TINY[PRESET_G[preset]]),
           "model.discriminator_options": dict(D_TINY[d_name]), **extra}
    if discriminator:
        cli["model.discriminator"] = discriminator
    return resolve(cli)[0]


def train_two_steps(parts):
    torch.manual_seed(0)
    G = build_generator(parts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # timm-unet: frozen random backbone
        D = build_discriminator(parts)
    method = build_method(parts)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.0, 0.999))
    opt_d = torch.optim.Adam([p for p in D.parameters() if p.requires_grad], lr=4e-4, betas=(0.0, 0.999))
    n = parts.num_classes
    ids = torch.randint(0, n, (2, 64, 64))
    cond = Condition(one_hot(ids, n))
    real = torch.rand(2, 3, 64, 64) * 2 - 1
    g_before = [p.detach().clone() for p in G.parameters()]
    d_before = [p.detach().clone() for p in D.parameters() if p.requires_grad]
    history = []
    for step in range(2):
        g = method.g_losses(G, D, real, cond, step)
        opt_g.zero_grad(set_to_none=True)
        sum(g.values()).backward()
        opt_g.step()
        d = method.d_losses(G, D, real, cond, step)
        opt_d.zero_grad(set_to_none=True)
        sum(d.values()).backward()
        opt_d.step()
        history.append({k: v.item() for k, v in {**g, **d}.items()})
    for losses in history:
        assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    assert any(not torch.equal(a, b) for a, b in zip(g_before, G.parameters())), "generator did not move"
    d_after = [p for p in D.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(d_before, d_after)), "discriminator did not move"
    return history[-1]


# (preset, discriminator, expected objective, expected terms, loss keys of the last step)
COMBINATIONS = [
    ("oasis", None, "n+1", {"labelmix"}),
    ("oasis", "patchgan", "hinge", set()),
    ("oasis", "patchgan-single", "hinge", set()),
    ("oasis", "timm-unet", "n+1", {"labelmix"}),
    ("oasis", "dp-sims", "n+1", {"labelmix"}),
    ("spade+", "dp-sims", "n+1", set()),
    ("oasis", "oasis-encoder", "bce", set()),
    ("oasis", "oasis-unet-concat", "bce", {"labelmix"}),
    ("oasis", "oasis-unet-projection", "bce", {"labelmix"}),
    ("spade+", "oasis-unet", "n+1", set()),
    ("spade+", "timm-unet", "n+1", set()),
    ("spade", "oasis-unet", "n+1", set()),
    ("spade", "oasis-encoder", "hinge", {"feature-matching"}),  # hinge scores per-image logits: it stays
    ("oasis", "fpse", "hinge", set()),  # FPSE's PATCH scores bring hinge; LabelMix needs per-pixel output
    ("spade", "fpse", "hinge", {"feature-matching"}),  # FPSE's bottom-up features serve SPADE's feature matching
    ("spade+", "fpse", "hinge", set()),
    ("cc-fpse", None, "hinge", {"fpse-feature-matching"}),
    ("cc-fpse", "oasis-unet", "n+1", set()),  # its features-based term is dropped with a note
    ("cc-fpse", "patchgan", "hinge", {"fpse-feature-matching"}),
]


@pytest.mark.parametrize("preset,discriminator,objective,terms", COMBINATIONS,
                         ids=[f"{p}+{d or 'own'}" for p, d, _, _ in COMBINATIONS])
def test_combination_trains(preset, discriminator, objective, terms):
    parts = resolve_parts(config(preset, discriminator))
    assert parts.objective == objective
    assert set(parts.losses) == terms
    losses = train_two_steps(parts)
    assert set(losses) == {"G_adv", "D_fake", "D_real"} | terms


def test_swapped_discriminator_brings_its_objective_and_drops_unfit_preset_terms_with_a_note():
    parts = resolve_parts(config("oasis", "patchgan"))
    assert parts.objective == "hinge" and "labelmix" not in parts.losses
    text = " | ".join(parts.notes)
    assert "objective 'hinge' follows discriminator 'patchgan'" in text
    assert "'labelmix' dropped" in text and "per-pixel" in text
    parts = resolve_parts(config("spade", "oasis-unet"))
    assert "feature-matching" not in parts.losses
    assert any("'feature-matching' dropped" in n and "features" in n for n in parts.notes)


def test_preset_dataset_options_of_the_replaced_discriminator_do_not_leak():
    """The oasis preset tunes oasis-unet for the demo data (num_res_blocks, width); patchgan must not get them."""
    cfg, provenance = resolve({"model.preset": "oasis", "data.name": "demo", "model.discriminator": "patchgan"})
    assert cfg.model.discriminator_options == {}
    parts = resolve_parts(cfg)
    assert "num_res_blocks" not in parts.discriminator_options
    own, _ = resolve({"model.preset": "oasis", "data.name": "demo"})
    assert own.model.discriminator_options["num_res_blocks"] == 4


def test_ablation_unet_with_n_plus_one_without_balancing_trains():
    parts = resolve_parts(config("oasis", None, **{"model.objective_options": {"balancing": False}}))
    assert parts.objective_options == {"balancing": False}
    assert train_two_steps(parts)["labelmix"] >= 0


def test_user_labelmix_with_patchgan_is_rejected():
    cfg = config("oasis", "patchgan", **{"model.losses": {"labelmix": 10}})
    with pytest.raises(IncompatibleError) as err:
        resolve_parts(cfg)
    msg = str(err.value)
    assert "'labelmix' needs per-pixel discriminator output" in msg and "'patchgan'" in msg
    assert "model.losses.labelmix=0" in msg  # how to drop it
    fitting = msg.split("provides it:")[1]
    for name in ("oasis-unet", "timm-unet", "oasis-unet-concat"):
        assert name in fitting
    assert "patchgan" not in fitting


def test_user_feature_matching_with_oasis_unet_is_rejected():
    cfg = config("oasis", None, **{"model.losses": {"feature-matching": 10}})
    with pytest.raises(IncompatibleError) as err:
        resolve_parts(cfg)
    msg = str(err.value)
    assert "'feature-matching' needs discriminator intermediate features" in msg and "'oasis-unet'" in msg
    fitting = msg.split("provides it:")[1]
    assert "patchgan" in fitting and "oasis-encoder" in fitting and "timm-unet" not in fitting


def test_explicit_objective_that_cannot_score_the_discriminator_is_rejected():
    cfg = config("oasis", "patchgan", **{"model.objective": "n+1"})
    with pytest.raises(IncompatibleError) as err:
        resolve_parts(cfg)
    msg = str(err.value)
    assert "objective 'n+1' cannot score discriminator 'patchgan'" in msg
    assert "Objectives that fit: bce, hinge" in msg
    cfg = config("spade+", "timm-unet", **{"model.objective": "hinge"})
    with pytest.raises(IncompatibleError, match="Objectives that fit: focal-n\\+1, n\\+1"):
        resolve_parts(cfg)
