"""The stable start keeps a discriminator alive that the official recipe kills; --official-recipe stays exact."""
from __future__ import annotations

import json
import os

import pytest
import torch
from rich.console import Console

from conftest import tiny_overrides
from gensynth.build import build_discriminator, build_generator, build_method, resolve_parts
from gensynth.checkpoint import load_checkpoint
from gensynth.config import resolve
from gensynth.nn.spectral import SpectralConv2d
from gensynth.train.stable_start import normalise_spectral_weights, spectral_layers, warmup_factor
from gensynth.train.speed import apply_memory_layout, resolve_channels_last
from gensynth.train.state import seed_everything
from gensynth.train.trainer import run_training

OFFICIAL = {"trainer.stable_start": False, "trainer.ema_warmup": False}


def _quiet():
    return Console(file=open(os.devnull, "w"))


def _spreads(run_dir) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["d_spread_max"]) for r in rows if r["kind"] == "health" and "d_spread_max" in r]


def test_normalised_spectral_weights_have_unit_sigma_and_compute_the_same_function():
    torch.manual_seed(0)
    parts = resolve_parts(resolve(tiny_overrides("unused", "unused"))[0])
    D = build_discriminator(parts).eval()
    ref = build_discriminator(parts).eval()
    ref.load_state_dict(D.state_dict())
    hook_conv = torch.nn.utils.spectral_norm(torch.nn.ConvTranspose2d(3, 5, 3))  # torch's hook, dim=1
    n = normalise_spectral_weights(D)
    assert n == len(spectral_layers(D)) > 0 and normalise_spectral_weights(hook_conv) == 1
    for layer in [*spectral_layers(D), hook_conv]:
        w = layer.weight_orig.detach()
        mat = (w.movedim(1, 0) if isinstance(layer, torch.nn.ConvTranspose2d) else w).reshape(
            w.shape[1] if isinstance(layer, torch.nn.ConvTranspose2d) else w.shape[0], -1)
        assert 1.0 - 1e-5 <= float(torch.linalg.matrix_norm(mat, ord=2)) < 1.1  # 15 iterations: sigma estimated from below
    # the official init leaves these weights ~30-400x smaller (xavier gain 0.02)
    assert all(float(r.weight_orig.detach().norm()) < 0.2 * float(d.weight_orig.detach().norm())
               for r, d in zip(spectral_layers(ref), spectral_layers(D)))
    # the same function: with the same (converged) u, v the rescaled weights give the same logits
    for r, d in zip(spectral_layers(ref), spectral_layers(D)):
        assert isinstance(r, SpectralConv2d)
        r.weight_u.copy_(d.weight_u), r.weight_v.copy_(d.weight_v)
    x = torch.randn(2, 3, 32, 32)
    a, b = D(x).logits, ref(x).logits
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.detach().abs().max()))


def test_warmup_factor():
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def test_d_learning_rate_warms_up_and_g_does_not(tmp_path, tiny_cache):
    cfg, prov = resolve(tiny_overrides(tmp_path / "run", tiny_cache, **{
        "trainer.stable_start_steps": 4, "trainer.steps": 6, "trainer.log_every": 1, "optim.lr_d": 1e-3}))
    run_training(cfg, prov, console=_quiet())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    # logged after step s: the learning rate of step s+1
    assert [r["lr_d"] for r in train] == pytest.approx([5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3, 1e-3])
    assert [r["lr_g"] for r in train] == pytest.approx([2e-4] * 6)


#: a small OASIS (32x32, batch 2, a 4-level U-Net at half width) whose discriminator dies with the official recipe
DYING = {"trainer.steps": 60, "trainer.batch_size": 2, "trainer.checkpoint_every": 1000, "trainer.sample_every": 1000,
         "trainer.log_every": 10, "trainer.seed": 0, "optim.lr_g": 4e-4,
         "model.discriminator_options.num_res_blocks": 4, "model.discriminator_options.width": 0.5}


@pytest.mark.slow
def test_stable_start_keeps_alive_a_discriminator_that_the_official_recipe_kills(tmp_path, tiny_cache):
    official, stable = tmp_path / "official", tmp_path / "stable"
    cfg, prov = resolve(tiny_overrides(official, tiny_cache, **DYING, **OFFICIAL))
    dead = run_training(cfg, prov, console=_quiet())
    cfg, prov = resolve(tiny_overrides(stable, tiny_cache, **DYING))
    alive = run_training(cfg, prov, console=_quiet())
    # official: logits constant over pixels and images from step 11 on; the monitor says so
    assert all(s < 0.01 for step, s in _spreads(official) if step >= 20), _spreads(official)
    assert [h.split(":")[0] for h in dead.health] == ["collapse at step 60"]
    assert "Try: the stable start (trainer.stable_start=true: drop --official-recipe)" in dead.health[0]
    # the default: D alive at step 60 (its logits vary by tenths over pixels, images, real and fake)
    assert all(s > 0.1 for step, s in _spreads(stable) if step >= 40), _spreads(stable)
    assert alive.health == []


def test_official_recipe_trains_exactly_the_official_iteration(tmp_path, tiny_cache):
    """--official-recipe: official init (no rescaling), constant learning rates, constant EMA decay -- the trainer's
    steps equal a plain loop of the official iteration (G step with D frozen, D step, Adam, EMA) on the same
    batches and noise."""
    from gensynth.data import loader

    keys = tiny_overrides(tmp_path / "run", tiny_cache, **{
        "trainer.steps": 3, "trainer.checkpoint_every": 3, "trainer.sample_every": 100, "trainer.ema_decay": 0.9,
        "optim.implementation": "for-loop", "trainer.channels_last": False, **OFFICIAL})
    cfg, prov = resolve(keys)
    run_training(cfg, prov, console=_quiet())
    got = load_checkpoint(tmp_path / "run")

    parts = resolve_parts(cfg)
    seed_everything(cfg.trainer.seed)
    G, D = build_generator(parts), build_discriminator(parts)
    layout = resolve_channels_last(False, torch.device("cpu"))  # the speed options off, as in the trainer
    apply_memory_layout(G, layout), apply_memory_layout(D, layout)
    ema = build_generator(parts)
    ema.load_state_dict(G.state_dict())
    method = build_method(parts)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.optim.lr_g, betas=(0.0, 0.999), foreach=False)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.optim.lr_d, betas=(0.0, 0.999), foreach=False)
    seed_everything(cfg.trainer.seed)
    batches = loader.train_batches(cfg.data, parts.dataset, batch_size=4, rank=0, world_size=1, seed=cfg.trainer.seed)
    rng = torch.get_rng_state()
    for _ in range(3):
        batch = next(batches)
        real, cond = loader.to_condition(batch, parts.num_classes, "cpu", dontcare_last=parts.dontcare_last,
                                         dontcare=parts.dataset.dontcare)
        torch.set_rng_state(rng)  # the trainer draws its batches without touching the training RNG
        D.requires_grad_(False)
        opt_g.zero_grad()
        sum(method.g_losses(G, D, real, cond).values()).backward()
        D.requires_grad_(True)
        opt_g.step()
        opt_d.zero_grad()
        sum(method.d_losses(G, D, real, cond).values()).backward()
        opt_d.step()
        with torch.no_grad():  # the official EMA: constant decay over parameters and buffers
            src = G.state_dict()
            for k, v in ema.state_dict().items():
                v.copy_(v * 0.9 + src[k] * 0.1 if v.dtype.is_floating_point else src[k])
        rng = torch.get_rng_state()
    for name, model in (("generator", G), ("discriminator", D)):
        state = got.state(name)
        for k, v in model.state_dict().items():
            assert torch.equal(state[k], v), f"{name}.{k}"
    ema_state = got.state("generator_ema")
    for k, v in ema.state_dict().items():
        if not any(t in k for t in ("running_", "num_batches", "weight_u", "weight_v")):  # BN-refreshed when saved
            assert torch.allclose(ema_state[k], v, rtol=1e-6, atol=1e-7), f"generator_ema.{k}"


def test_official_recipe_flag_sets_both_keys():
    from gensynth.cli.train_cmd import OFFICIAL_RECIPE, _flags_to_config

    assert _flags_to_config({"official_recipe": True}) == OFFICIAL_RECIPE == OFFICIAL
    assert _flags_to_config({"official_recipe": True, "set_items": ["trainer.ema_warmup=true"]})[
        "trainer.ema_warmup"] is True  # --set still wins
