"""The cc-fpse preset: the official recipe through the real configuration code, and short training runs of the
preset's parts (VAE + KL + feature matching + hinge through the core's StyleEncoderMethod)."""
from __future__ import annotations

import pytest
import torch

from gensynth.build import build_discriminator, build_generator, build_method, resolve_parts
from gensynth.config import resolve
from gensynth.errors import IncompatibleError
from gensynth.interfaces import Condition, one_hot
from gensynth.method import StyleEncoderMethod


@pytest.mark.parametrize("data,mode,edges,size", [("cityscapes", "more", True, [256, 512]),
                                                  ("ade20k", "normal", False, [256, 256]),
                                                  ("coco-stuff", "normal", True, [256, 256])])
def test_official_recipe_per_dataset(data, mode, edges, size):
    cfg, provenance = resolve({"model.preset": "cc-fpse", "data.name": data})
    o = cfg.optim
    assert (o.lr_g, o.lr_d, o.beta1, o.beta2) == (1e-4, 4e-4, 0.0, 0.9)
    assert (o.schedule, o.decay_start) == ("linear-decay", 0.5)  # niter 100 constant + niter_decay 100 to 0
    assert cfg.trainer.epochs == 200 and cfg.trainer.ema_decay is None and cfg.trainer.batch_size == 8
    parts = resolve_parts(cfg)
    assert (parts.generator, parts.discriminator, parts.objective) == ("cc-fpse", "fpse", "hinge")
    assert parts.losses == {"fpse-feature-matching": 20.0, "vgg": 10.0, "kl": 0.05}
    g = parts.generator_options
    assert g["use_vae"] is True and g["num_upsampling_layers"] == mode and list(g["size"]) == size
    assert g.get("use_instance_edges", False) == edges
    assert parts.discriminator_options.get("use_instance_edges", False) == edges
    assert parts.dontcare_last == (parts.dataset.dontcare is not None)  # SPADE's extra-last don't-care channel
    assert "official scripts" in provenance["model.generator_options.use_vae"]


def test_demo_entry_is_small_and_has_no_vae():
    cfg, _ = resolve({"model.preset": "cc-fpse", "data.name": "demo"})
    parts = resolve_parts(cfg)
    assert parts.losses == {"fpse-feature-matching": 20.0}  # no VGG weights offline, no VAE
    assert parts.generator_options["ngf"] == 8 and parts.discriminator_options["ndf"] == 16
    assert cfg.trainer.steps == 300 and cfg.trainer.batch_size == 8
    assert parts.generator_options["init_gain"] == 1.0 and cfg.optim.lr_g == 4e-4  # the demo's two deviations
    official, _ = resolve({"model.preset": "cc-fpse", "data.name": "ade20k"})
    assert resolve_parts(official).generator_options["init_gain"] == 0.02 and official.optim.lr_g == 1e-4
    with torch.device("meta"):
        g, d = build_generator(parts), build_discriminator(parts)
    assert sum(p.numel() for p in g.parameters()) < 3_000_000 and sum(p.numel() for p in d.parameters()) < 500_000


def test_kl_without_the_vae_is_refused():
    cfg, _ = resolve({"model.preset": "cc-fpse", "data.name": "demo", "model.losses.kl": 0.05})
    with pytest.raises(IncompatibleError, match="'kl' needs a generator with a style encoder.*use_vae=true"):
        resolve_parts(cfg)


def _steps(parts, n_steps: int = 2, size: int = 64, seed: int = 0):
    torch.manual_seed(seed)
    G, D, method = build_generator(parts), build_discriminator(parts), build_method(parts)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), lr=4e-4, betas=(0.0, 0.9))
    n = parts.num_classes
    ids = torch.randint(0, n, (2, size // 8, size // 8)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    cond = Condition(one_hot(ids, n), ids=ids)
    real = torch.rand(2, 3, size, size) * 2 - 1
    before = [p.detach().clone() for p in G.parameters()]
    history = []
    for step in range(n_steps):
        g = method.g_losses(G, D, real, cond, step)
        opt_g.zero_grad(set_to_none=True)
        sum(g.values()).backward()
        opt_g.step()
        d = method.d_losses(G, D, real, cond, step)
        opt_d.zero_grad(set_to_none=True)
        sum(d.values()).backward()
        opt_d.step()
        history.append({k: v.item() for k, v in {**g, **d}.items()})
    frozen = [(a, b) for a, b in zip(before, G.parameters()) if not b.requires_grad]
    assert frozen and all(torch.equal(a, b) for a, b in frozen)  # the never-applied BatchNorms stay put
    assert any(not torch.equal(a, b) for a, b in zip(before, G.parameters()) if b.requires_grad)
    return method, history


def test_preset_with_the_vae_trains_with_kl_feature_matching_and_hinge():
    cfg, _ = resolve({"model.preset": "cc-fpse", "data.name": "demo",
                      "model.generator_options.use_vae": True, "model.generator_options.size": [64, 64],
                      "model.generator_options.encoder_size": 32, "model.generator_options.z_dim": 8,
                      "model.generator_options.ngf": 4, "model.generator_options.hidden": 8,
                      "model.discriminator_options.ndf": 4, "model.losses.kl": 0.05})
    parts = resolve_parts(cfg)
    method, history = _steps(parts)
    assert isinstance(method, StyleEncoderMethod)
    assert set(history[0]) == {"G_adv", "fpse-feature-matching", "kl", "D_fake", "D_real"}
    assert history[0]["kl"] > 0 and history[0]["fpse-feature-matching"] > 0
    for h in history:
        assert all(v == v and abs(v) < 1e6 for v in h.values()), h


def test_gensynth_train_runs_the_preset_on_demo_data(tmp_path, tiny_cache):
    """``gensynth train --model cc-fpse --data demo`` through the real trainer, at tiny widths: losses logged,
    checkpoint saved with the frozen BatchNorms unchanged."""
    import json

    from click.testing import CliRunner

    from gensynth.checkpoint import load_checkpoint
    from gensynth.cli.main import cli

    run = tmp_path / "run"
    sets = {"data.size": [64, 64], "data.demo_samples": 16, "data.num_workers": 0, "data.cache_dir": str(tiny_cache),
            "model.generator_options.ngf": 4, "model.generator_options.hidden": 8, "model.discriminator_options.ndf": 4,
            "trainer.batch_size": 2, "trainer.log_every": 1, "trainer.sample_every": 3, "trainer.checkpoint_every": 3}
    args = [x for k, v in sets.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    res = CliRunner().invoke(cli, ["train", "--model", "cc-fpse", "--data", "demo", "--steps", "3", "--run-dir",
                                   str(run), *args])
    assert res.exit_code == 0, res.output
    assert f"done: step 3; run directory {run}" in res.output
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*(r.keys() for r in logged))
    assert {"fpse-feature-matching", "G_adv", "D_fake", "D_real"} <= keys, keys
    assert all(r[k] == r[k] for r in logged for k in ("fpse-feature-matching", "G_adv") if k in r)  # not NaN
    state = load_checkpoint(run).state("generator")
    assert torch.all(state["head_0.norm_0.bias"] == 0)  # never applied, never trained: still its zero init
    assert (run / "samples" / "step_00000003.png").is_file()
