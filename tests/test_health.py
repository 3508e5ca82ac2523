"""The training-health monitor: its figures, and its verdicts on forced collapse, divergence and label-blindness."""
from __future__ import annotations

import json
import os

import pytest
import torch
from rich.console import Console

from gensynth.config import HealthConfig, resolve
from gensynth.interfaces import DiscriminatorOutput, DOutputKind, one_hot
from gensynth.train.health import (HealthMonitor, label_dependence, noise_dependence, output_spread,
                                   parameter_rms)
from gensynth.train.trainer import UnhealthyTrainingError, run_training

from conftest import tiny_overrides


def _quiet():
    return Console(file=open(os.devnull, "w"))


def _records(run_dir, kind="health"):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


# ---------------------------------------------------------------------------------------------------- figures
def test_output_spread_is_zero_for_a_constant_d_and_the_logit_std_otherwise():
    constant = torch.full((2, 5, 4, 4), 3.0)
    assert float(output_spread(constant, constant)) == 0.0
    torch.manual_seed(0)
    noisy = torch.randn(4, 3, 16, 16) * 2.0
    assert float(output_spread(noisy)) == pytest.approx(2.0, rel=0.05)
    # each output on its own: logits constant within the real and within the fake images have no spread, even
    # when they differ between the two (a pinned N+1 D whose "fake" channel separates real from fake)
    real, fake = torch.ones(2, 1, 4, 4), -torch.ones(2, 1, 4, 4)
    assert float(output_spread(real, fake)) == 0.0
    assert float(output_spread(noisy, torch.zeros(4, 3, 16, 16))) == pytest.approx(1.0, rel=0.05)
    # the median over channels: one varying channel (OASIS's "fake") among constant class channels is ~0
    pinned = torch.zeros(2, 12, 8, 8)
    pinned[:, 0] = torch.randn(2, 8, 8)
    assert float(output_spread(pinned)) == 0.0
    # large maps are read on a ~32x32 grid: the same spread for a map whose values repeat in 4x4 cells
    cells = noisy.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)  # (4, 3, 64, 64)
    assert float(output_spread(cells)) == pytest.approx(float(output_spread(noisy)), rel=1e-5)
    # multi-scale outputs (lists) average the scales
    out = DiscriminatorOutput(DOutputKind.PATCH, [torch.zeros(2, 1, 4, 4), noisy[:2, :1]])
    assert float(output_spread(out)) == pytest.approx(float(noisy[:2, :1].std(unbiased=False)) / 2, rel=1e-5)


def test_label_dependence_is_one_for_class_colours_and_near_zero_for_label_blind_images():
    ids = torch.zeros(2, 8, 8, dtype=torch.long)
    ids[:, :, 4:] = 1
    ids[1, :4] = 2
    labels = one_hot(ids, 3)
    colours = torch.tensor([[1.0, -1, 0], [0, 1, -1], [-1, -1, 1]])
    painted = colours[ids].permute(0, 3, 1, 2)  # each class its own colour
    assert float(label_dependence(painted, labels)) == pytest.approx(1.0)
    torch.manual_seed(0)
    blind = torch.randn(2, 3, 8, 8)  # colour independent of the class
    assert float(label_dependence(blind, labels)) < 0.1
    assert float(label_dependence(torch.zeros(2, 3, 8, 8), labels)) == 0.0  # flat grey: nothing explained


def test_noise_dependence_and_parameter_rms():
    torch.manual_seed(0)
    a = torch.randn(2, 3, 8, 8)
    assert noise_dependence(a, a) == 0.0
    assert noise_dependence(a, torch.randn(2, 3, 8, 8)) > 1.0
    layer = torch.nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.fill_(2.0)
        layer.bias.fill_(-2.0)
    assert float(parameter_rms(layer)) == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------------------- verdicts
def test_monitor_reports_a_collapse_after_patience_steps_once_and_again_after_recovery():
    cfg = HealthConfig(every=5, patience=10, collapse_spread=0.01)
    monitor = HealthMonitor(cfg, {}, torch.device("cpu"))
    pinned = {"D_real": torch.tensor(3.58), "D_fake": torch.tensor(3.58), "G_adv": torch.tensor(3.58),
              "labelmix": torch.tensor(5e-6)}

    def window(spread):
        for _ in range(5):
            monitor.after_step({"d_spread": torch.tensor(spread)})

    found = []
    for step, spread in [(5, 0.5), (10, 0.001), (15, 0.002), (20, 0.001), (25, 0.3), (30, 0.001), (35, 0.001)]:
        window(spread)
        report = monitor.check(step, pinned)
        assert report.figures["d_spread_max"] == pytest.approx(spread)
        found += [(f.kind, f.step, f.message) for f in report.findings]
    assert [(k, s) for k, s, _ in found] == [("collapse", 15), ("collapse", 35)]
    # losses pinned at the objective's uninformative level count as collapsed, whatever the spread
    pinned_monitor = HealthMonitor(cfg, {}, torch.device("cpu"), pinned_level=3.58)
    kinds = []
    for step in (5, 10, 15):
        for _ in range(5):
            pinned_monitor.after_step({"d_spread": torch.tensor(0.02)})
        kinds += [f.kind for f in pinned_monitor.check(step, pinned).findings]
    assert kinds == ["collapse"]
    message = found[0][2]
    assert "the discriminator has collapsed: since step 6 its outputs carry nothing" in message
    assert "D_real=3.58" in message and "labelmix=5e-06" in message and "a lower optim.lr_d" in message


def test_monitor_reports_weight_and_loss_divergence():
    layer = torch.nn.Linear(4, 4)
    monitor = HealthMonitor(HealthConfig(every=1), {"generator": layer}, torch.device("cpu"))
    monitor.after_step({})
    assert monitor.check(1, {"G_adv": torch.tensor(2.0)}).findings == []
    with torch.no_grad():
        layer.weight.mul_(1e6)
    monitor.after_step({})
    findings = monitor.check(2, {"G_adv": torch.tensor(3e4)}).findings
    assert [f.kind for f in findings] == ["divergence"]
    assert "the generator's parameter RMS grew from" in findings[0].message
    assert "loss G_adv grew from 2 to 3e+04" in findings[0].message


# ---------------------------------------------------------------------------------------------------- in training
def test_forced_collapse_is_reported_within_patience_steps_with_its_symptoms(tmp_path, tiny_cache):
    """A discriminator that cannot learn (lr 1e-12) keeps its near-zero initial logits: collapsed."""
    run = tmp_path / "run"
    cfg, prov = resolve(tiny_overrides(run, tiny_cache, **{
        "optim.lr_d": 1e-12, "trainer.steps": 12, "health.every": 2, "health.patience": 6,
        "trainer.checkpoint_every": 100, "trainer.sample_every": 100}))
    result = run_training(cfg, prov, console=_quiet())
    assert result.step == 12
    assert len(result.health) == 1 and result.health[0].startswith("collapse at step 6: the discriminator has "
                                                                     "collapsed: since step 1")
    records = _records(run)
    figures = [r for r in records if "d_spread" in r]
    assert [r["step"] for r in figures] == [2, 4, 6, 8, 10, 12]
    assert all(r["d_spread_max"] < 0.01 for r in figures)
    assert {"param_rms/generator", "param_rms/discriminator"} <= set(figures[0])
    assert [r["finding"] for r in records if "finding" in r] == ["collapse"]
    assert "Try: a smaller gradient clip (optim.grad_clip=0.1)" in result.health[0]


def test_health_action_stop_saves_a_checkpoint_then_stops_with_the_finding(tmp_path, tiny_cache):
    run = tmp_path / "run"
    cfg, prov = resolve(tiny_overrides(run, tiny_cache, **{
        "optim.lr_d": 1e-12, "trainer.steps": 12, "health.every": 2, "health.patience": 4,
        "health.action": "stop", "trainer.checkpoint_every": 100, "trainer.sample_every": 100}))
    with pytest.raises(UnhealthyTrainingError, match=r"stopped by the health monitor \(health.action=stop\) at "
                                                     r"step 4, after saving a checkpoint .*the discriminator has "
                                                     r"collapsed"):
        run_training(cfg, prov, console=_quiet())
    assert (run / "checkpoints" / "step_00000004").is_dir()


def test_a_disabled_monitor_records_nothing(tmp_path, tiny_cache):
    run = tmp_path / "run"
    cfg, prov = resolve(tiny_overrides(run, tiny_cache, **{
        "optim.lr_d": 1e-12, "trainer.steps": 12, "health.enabled": False, "health.every": 2, "health.patience": 6,
        "trainer.checkpoint_every": 100, "trainer.sample_every": 100}))
    result = run_training(cfg, prov, console=_quiet())
    assert result.step == 12 and result.health == []
    assert _records(run) == [] and len(_records(run, "train")) == 6


def test_forced_divergence_is_reported(tmp_path, tiny_cache):
    """optim.lr_g=1e6 used to run silently to weights of 1e29 and exit 0."""
    run = tmp_path / "run"
    cfg, prov = resolve(tiny_overrides(run, tiny_cache, **{
        "optim.lr_g": 1e6, "trainer.steps": 4, "health.every": 2, "trainer.checkpoint_every": 100,
        "trainer.sample_every": 100}))
    result = run_training(cfg, prov, console=_quiet())
    assert len(result.health) == 1
    assert result.health[0].startswith("divergence at step 2: training is diverging: the generator's parameter "
                                       "RMS grew from 0.00")  # the official init's ~2e-3
    assert "optim.lr_g" in result.health[0]
    rms = [r["param_rms/generator"] for r in _records(run) if "param_rms/generator" in r]
    assert rms[0] > 1e4  # Adam moved every weight by ~1e6
    assert [r["finding"] for r in _records(run) if "finding" in r] == ["divergence"]  # reported once


def test_a_label_blind_generator_is_reported(tmp_path, tiny_cache, monkeypatch):
    """A generator whose every image is one flat colour cannot follow its labels (the classes explain none of the
    colour variance, against most of it in real images); after the grace it is reported."""
    from gensynth.build import Parts

    run = tmp_path / "run"
    cfg, prov = resolve(tiny_overrides(run, tiny_cache, **{
        "trainer.steps": 8, "health.every": 2, "health.patience": 4, "health.generator_grace": 2,
        "trainer.checkpoint_every": 100, "trainer.sample_every": 100}))
    from gensynth.train import trainer as trainer_mod

    real_build = trainer_mod.build_generator

    def label_blind(parts: Parts):
        g = real_build(parts)
        forward = g.forward

        def blind(cond, z=None):
            out = forward(cond, z)
            out.image = out.image.mean(dim=(0, 2, 3), keepdim=True).expand_as(out.image)  # one flat colour
            return out

        g.forward = blind
        return g

    monkeypatch.setattr(trainer_mod, "build_generator", label_blind)
    result = run_training(cfg, prov, console=_quiet())
    kinds = [h.split(" at step")[0] for h in result.health]
    assert "labels" in kinds
    message = result.health[kinds.index("labels")]
    assert "the generator ignores its label maps" in message
