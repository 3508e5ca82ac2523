"""SPADE presets through the real configuration, build and training-method code (own plugin host)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gensynth_spade.plugin as spade_plugin
from gensynth import hookimpl
from gensynth.build import build_discriminator, build_generator, build_method, resolve_parts
from gensynth.config import resolve
from gensynth.errors import IncompatibleError, MissingWeightsError
from gensynth.interfaces import ClassInfo, Condition, DatasetSpec, one_hot
from gensynth.method import AdversarialMethod
from gensynth.plugins import PluginHost
from gensynth_spade.method import SpadeMethod


class TinySpec(DatasetSpec):
    """A stand-in dataset (no files): 4 classes, class 0 = don't-care, 32x32."""

    def __init__(self, name: str, has_instances: bool = False):
        self.name = name
        self.classes = [ClassInfo(i, f"c{i}", (i, i, i)) for i in range(4)]
        self.dontcare = 0
        self.default_size = (32, 32)
        self.has_instances = has_instances

    @property
    def raw_to_class(self):
        return np.arange(4)

    def iter_raw(self, root, split):
        return iter(())

    def default_options(self):
        return {"data.size": [32, 32]}


class StandIns:
    @hookimpl
    def register_datasets(self, register):
        register("demo", TinySpec("demo"))
        register("cityscapes", TinySpec("cityscapes", has_instances=True))


@pytest.fixture()
def host(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no VGG weights anywhere
    h = PluginHost(load_entry_points=False)
    h.register_plugin(spade_plugin, "spade")
    h.register_plugin(StandIns(), "stand-ins")
    return h


def test_spade_preset_as_published(host):
    cfg, prov = resolve({"model.preset": "spade", "data.name": "cityscapes"}, host=host)
    assert (cfg.optim.lr_g, cfg.optim.lr_d, cfg.optim.beta1, cfg.optim.beta2) == (1e-4, 4e-4, 0.0, 0.9)
    assert cfg.optim.schedule == "linear-decay" and cfg.optim.decay_start == 0.5
    assert cfg.trainer.ema_decay is None and cfg.trainer.batch_size == 16 and cfg.trainer.epochs == 200
    assert prov["trainer.batch_size"] == "preset spade for cityscapes (official scripts)"
    assert cfg.model.generator_options["num_upsampling_layers"] == "more"
    parts = resolve_parts(cfg, host)
    assert (parts.generator, parts.discriminator, parts.objective) == ("spade", "patchgan", "hinge")
    assert parts.losses == {"feature-matching": 10.0, "vgg": 10.0}
    assert parts.generator_options["use_instance_edges"] and parts.discriminator_options["use_instance_edges"]
    assert parts.dontcare_last and parts.dontcare_index == 3
    assert host.registry("discriminators").entry("patchgan").extra["default_objective"] == "hinge"
    # VGG weights are missing: the run fails before training starts, naming the file
    with pytest.raises(MissingWeightsError, match="vgg19-dcbb9e9d.pth"):
        build_method(parts, host)


def test_spade_plus_preset(host):
    cfg, _ = resolve({"model.preset": "spade+", "data.name": "cityscapes"}, host=host)
    assert cfg.trainer.ema_decay == 0.9999 and cfg.optim.beta2 == 0.999 and cfg.optim.schedule == "constant"
    assert (cfg.optim.lr_g, cfg.optim.lr_d, cfg.optim.beta1) == (1e-4, 4e-4, 0.0)
    parts = resolve_parts(cfg, host)
    assert "feature-matching" not in parts.losses and parts.losses["vgg"] == 10.0


@pytest.mark.parametrize("preset", ["spade", "spade+"])
def test_demo_defaults_are_tiny_and_need_no_vgg_file(host, preset):
    cfg, _ = resolve({"model.preset": preset}, host=host)
    assert cfg.data.name == "demo" and cfg.trainer.batch_size == 8 and cfg.trainer.steps == 300
    parts = resolve_parts(cfg, host)
    assert "vgg" not in parts.losses
    assert parts.generator_options["ngf"] == 8 and parts.generator_options["spade_hidden"] == 16
    assert parts.discriminator_options["ndf"] == 16
    method = build_method(parts, host)
    assert isinstance(method, SpadeMethod) and isinstance(method, AdversarialMethod)


def test_kl_needs_a_vae_generator(host):
    cfg, _ = resolve({"model.preset": "spade", "model.losses.kl": 0.05}, host=host)
    with pytest.raises(IncompatibleError, match="use_vae=true"):
        resolve_parts(cfg, host)


def _batch(n: int, b: int = 2, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, n, (b, size // 8, size // 8), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
    real = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    return real, Condition(one_hot(ids, n))


def _train(parts, host, steps: int = 3):
    torch.manual_seed(0)
    G, D = build_generator(parts, host), build_discriminator(parts, host)
    method = build_method(parts, host)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), lr=4e-4, betas=(0.0, 0.9))
    before = [p.detach().clone() for p in G.parameters()]
    history = []
    for step in range(steps):
        real, cond = _batch(parts.num_classes, seed=step)
        g_losses = method.g_losses(G, D, real, cond, step)
        opt_g.zero_grad(); sum(g_losses.values()).backward(); opt_g.step()
        d_losses = method.d_losses(G, D, real, cond, step)
        opt_d.zero_grad(); sum(d_losses.values()).backward(); opt_d.step()
        history.append({k: v.item() for k, v in {**g_losses, **d_losses}.items()})
    changed = any(not torch.equal(a, b) for a, b in zip(before, G.parameters()))
    return history, changed


def test_spade_steps_with_all_terms(host):
    cli = {"model.preset": "spade", "model.losses.vgg": 10, "model.loss_options": {"vgg": {"random_init": True}},
           "model.generator_options.ngf": 4, "model.discriminator_options.ndf": 8}
    cfg, _ = resolve(cli, host=host)
    parts = resolve_parts(cfg, host)
    history, changed = _train(parts, host)
    assert set(history[0]) == {"G_adv", "feature-matching", "vgg", "D_fake", "D_real"}
    assert all(math.isfinite(v) for h in history for v in h.values()) and changed
    assert history[0]["feature-matching"] > 0 and history[0]["vgg"] > 0
    assert all(h["D_fake"] >= 0 and h["D_real"] >= 0 for h in history)  # hinge terms


def test_spade_vae_steps_feed_the_real_image_to_the_encoder(host):
    cli = {"model.preset": "spade", "model.losses.kl": 0.05,
           "model.generator_options": {"ngf": 4, "use_vae": True, "size": [32, 32], "encoder_size": 16, "z_dim": 8},
           "model.discriminator_options.ndf": 8, "model.discriminator": "patchgan-single"}
    cfg, _ = resolve(cli, host=host)
    parts = resolve_parts(cfg, host)
    assert parts.discriminator_options["num_D"] == 1
    history, changed = _train(parts, host, steps=2)
    assert set(history[0]) == {"G_adv", "feature-matching", "kl", "D_fake", "D_real"}
    assert all(math.isfinite(v) for h in history for v in h.values()) and changed
    assert history[0]["kl"] > 0
