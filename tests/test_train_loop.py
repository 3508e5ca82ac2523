"""The single-process training loop: run layout, resume equivalence, NaN stop, fallback, init-from, API."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from pydantic import BaseModel
from rich.console import Console

import gensynth
from gensynth.checkpoint import CheckpointWarning, list_checkpoints, load_checkpoint, read_pointer
from gensynth.config import resolve
from gensynth.errors import CheckpointError, ConfigError
from gensynth.interfaces import LossTerm, one_hot
from gensynth.plugins import get_host
from gensynth.train.trainer import NonFiniteLossError, run_training

from conftest import tiny_overrides


def _quiet():
    return Console(file=open(os.devnull, "w"))


def _train(run_dir, cache, **extra):
    cfg, prov = resolve(tiny_overrides(run_dir, cache, **extra))
    return run_training(cfg, prov, console=_quiet())


def _assert_same_checkpoint(a, b):
    for name in ("generator", "generator_ema", "discriminator"):
        sa, sb = a.state(name), b.state(name)
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{name}.{k} differs"
    ta, tb = a.training_state(), b.training_state()
    for opt in ("optim_g", "optim_d"):
        for pid, st in ta[opt]["state"].items():
            assert torch.equal(st["exp_avg"], tb[opt]["state"][pid]["exp_avg"])
            assert torch.equal(st["exp_avg_sq"], tb[opt]["state"][pid]["exp_avg_sq"])


def test_tiny_run_layout(tiny_run):
    run = tiny_run.run_dir
    assert tiny_run.step == 6
    doc = json.loads((run / "config.json").read_text())
    assert doc["config"]["trainer"]["steps"] == 6 and doc["provenance"]["trainer.steps"] == "cli"
    assert "oasis" in doc["plugins"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6]
    for r in train:
        for k in ("G_adv", "D_fake", "D_real", "labelmix", "lr_g", "lr_d", "images_per_s"):
            assert np.isfinite(r[k]), (k, r)
        assert r["lr_g"] == pytest.approx(2e-4)  # the preset's demo value, not a trainer constant
    # the EMA warm-up: decay (1+t)/(10+t) after t updates, capped by the preset's 0.999
    assert train[-1]["ema_decay"] == pytest.approx(7 / 16)
    assert tiny_run.metrics["G_adv"] == pytest.approx(train[-1]["G_adv"])
    assert len(list((run / "tb").iterdir())) == 1
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000003", "step_00000006"]
    assert read_pointer(run / "checkpoints").name == "step_00000006"
    ck = load_checkpoint(run)
    assert ck.step == 6 and ck.meta["data_position"] == 6 and ck.meta["world_size"] == 1
    g, ema = ck.state("generator"), ck.state("generator_ema")
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in g)
    assert any(not torch.equal(g[k], ema[k]) for k in g if g[k].is_floating_point())
    ts = ck.training_state()
    assert ts["step"] == 6 and ts["ema"]["updates"] == 6 and len(ts["ranks"]) == 1


def test_sample_grid_columns(tiny_run):
    from PIL import Image

    from gensynth.train.samples import palette

    spec = get_host().registry("datasets").get("demo")
    paths = sorted((tiny_run.run_dir / "samples").iterdir())
    assert [p.name for p in paths] == ["step_00000003.png", "step_00000006.png"]
    grid = np.asarray(Image.open(paths[-1]).convert("RGB"))
    assert grid.shape == (4 * 34 - 2, 3 * 34 - 2, 3)  # 4 examples x (label | generated | real), 32 px + 2 px gaps
    label_col = grid[:32, :32].reshape(-1, 3)
    allowed = {tuple(c) for c in palette(spec.classes).tolist()}
    assert {tuple(c) for c in label_col.tolist()} <= allowed
    assert len({tuple(c) for c in label_col.tolist()}) >= 2
    fake, real = grid[:32, 34:66].astype(float), grid[:32, 68:100].astype(float)
    assert np.abs(fake - real).mean() > 1.0  # the middle column is generated, not a copy of the real image


def test_load_model_api(tiny_run):
    from gensynth.api import build_model, load_model

    m = load_model(tiny_run.run_dir)
    ck = load_checkpoint(tiny_run.run_dir)
    assert not m.generator.training and m.discriminator is None
    assert m.config.trainer.steps == 6 and m.parts.generator == "oasis" and m.checkpoint.path == ck.path
    ema = ck.state("generator_ema")
    for k, v in m.generator.state_dict().items():
        assert torch.equal(v, ema[k])
    labels = one_hot(torch.zeros(2, 32, 32, dtype=torch.long), m.parts.num_classes)
    with torch.no_grad():
        out = m.generator(labels)
    assert out.image.shape == (2, 3, 32, 32) and out.image.abs().max() <= 1.0
    raw = load_model(tiny_run.run_dir, ema=False, with_discriminator=True)
    g = ck.state("generator")
    assert all(torch.equal(v, g[k]) for k, v in raw.generator.state_dict().items())
    assert raw.discriminator is not None and not raw.discriminator.training
    with pytest.raises(CheckpointError, match="nope"):
        load_model(tiny_run.run_dir / "nope")
    G, D, parts = build_model("oasis", "demo", **{"model.generator_options.channels": 4,
                                                  "model.generator_options.num_res_blocks": 2})
    assert parts.num_classes == m.parts.num_classes and G.training
    assert sum(p.numel() for p in G.parameters()) != sum(p.numel() for p in m.generator.parameters())


def test_resume_equals_uninterrupted(tiny_run, tiny_cache, tmp_path):
    run = tmp_path / "run"
    first = _train(run, tiny_cache, **{"trainer.steps": 3})
    assert first.step == 3
    second = _train(run, tiny_cache)  # same command, more steps: continues from step 3
    assert second.step == 6
    _assert_same_checkpoint(load_checkpoint(run), load_checkpoint(tiny_run.run_dir))


def test_truncated_latest_resumes_from_previous(tiny_run, tiny_cache, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    f = run / "checkpoints" / "step_00000006" / "generator.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.warns(CheckpointWarning, match="step_00000006/generator.safetensors is damaged"):
        result = _train(run, tiny_cache)
    assert result.step == 6  # redid steps 4..6 from step 3, exactly
    _assert_same_checkpoint(load_checkpoint(run), load_checkpoint(tiny_run.run_dir))


def test_resume_refuses_changed_model(tiny_run, tiny_cache, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    with pytest.raises(ConfigError, match=r"model.generator_options.channels: 4 -> 8"):
        _train(run, tiny_cache, **{"model.generator_options.channels": 8, "trainer.steps": 9})
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        cfg, prov = resolve(tiny_overrides(tmp_path / "empty", tiny_cache))
        run_training(cfg, prov, console=_quiet(), resume=True)


def test_resume_with_other_worker_count_warns(tiny_run, tiny_cache, tmp_path):
    import io

    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    out = io.StringIO()
    cfg, prov = resolve(tiny_overrides(run, tiny_cache, **{"trainer.steps": 7, "data.num_workers": 1}))
    result = run_training(cfg, prov, console=Console(file=out, width=300))
    assert result.step == 7
    text = " ".join(out.getvalue().split())
    assert "resuming with data.num_workers 0 -> 1: training continues from step 6" in text
    assert "order of samples from here on differs" in text


class _NanProbe(LossTerm):
    """Test-only G-side term: 0 until ``from_step``, then NaN."""

    side = "G"

    def __call__(self, ctx):
        value = ctx.fake.mean() * 0.0
        return value + float("nan") if ctx.step >= self.options.get("from_step", 0) else value


class _NanProbeOptions(BaseModel):  # loss terms declare the options they read (unknown ones are rejected)
    from_step: int = 0


class _NanPlugin:
    @gensynth.hookimpl
    def register_losses(self, register):
        register("nan_probe", _NanProbe, options=_NanProbeOptions, description="test-only NaN injector")


@pytest.fixture
def nan_plugin():
    host = get_host()
    host.register_plugin(_NanPlugin(), name="test-nan-probe")
    yield
    host.unregister_plugin("test-nan-probe")


@pytest.mark.parametrize("log_every", [2, 100])
def test_nan_loss_stops_with_clear_error(nan_plugin, tiny_cache, tmp_path, log_every):
    run = tmp_path / "run"
    extra = {"model.losses.nan_probe": 1.0, "model.loss_options.nan_probe": {"from_step": 3},
             "trainer.steps": 9, "trainer.log_every": log_every}
    with pytest.raises(NonFiniteLossError) as info:
        _train(run, tiny_cache, **extra)
    msg = str(info.value)
    assert "'nan_probe'" in msg and "non-finite" in msg
    # NaN appears in step 4: found at the step-4 log (log_every 2) or before the step-6 checkpoint (never logged)
    assert ("became non-finite (NaN or inf) at step 4;" in msg) if log_every == 2 else ("between step 4 and step 6" in msg)
    assert "step_00000003" in msg
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000003"]
    ck = load_checkpoint(run)
    assert ck.step == 3
    assert all(torch.isfinite(v).all() for v in ck.state("generator").values() if v.is_floating_point())


def test_init_from_keeps_matching_tensors(tiny_run, tiny_cache, tmp_path, capsys):
    from gensynth.train.trainer import Trainer

    cfg, prov = resolve(tiny_overrides(tmp_path / "ft", tiny_cache, **{
        "model.generator_options.z_dim": 6, "trainer.init_from": str(tiny_run.run_dir)}))
    t = Trainer(cfg, prov, console=_quiet())
    try:
        t._setup()
        src = load_checkpoint(tiny_run.run_dir)
        g_src, d_src = src.state("generator"), src.state("discriminator")
        fresh = {k.split(" ")[0] for k in t._init_report.reinitialised["generator"]}
        # z_dim changes the input width of the first conv and of every SPADE mlp_shared conv
        assert "fc.weight" in fresh and any("mlp_shared" in k for k in fresh)
        for k, v in t.G.state_dict().items():
            if k in fresh:
                assert v.shape != g_src[k].shape
            else:
                assert torch.equal(v, g_src[k]), k
        assert t._init_report.reinitialised["discriminator"] == []
        assert all(torch.equal(v, d_src[k]) for k, v in t.D.state_dict().items())
        summary = t._init_report.summary()
        assert f"generator: {len(g_src) - len(fresh)} tensors loaded, {len(fresh)} kept their fresh init" in summary
    finally:
        if t.log is not None:
            t.log.close()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_with_gradient_accumulation(tiny_cache, tmp_path, precision):
    run = tmp_path / "run"
    result = _train(run, tiny_cache, **{"trainer.precision": precision, "trainer.micro_batch_size": 2,
                                        "trainer.steps": 2, "trainer.checkpoint_every": 2})
    assert result.step == 2 and all(np.isfinite(result.metrics[k]) for k in ("G_adv", "D_fake", "D_real"))
    ck = load_checkpoint(run)
    assert ck.meta["data_position"] == 4  # 2 steps x 2 micro-batches of 2 (global batch 4)
    ts = ck.training_state()
    assert ts["scaler_g"] != {} if precision == "fp16" else ts["scaler_g"] == {}
    assert all(torch.isfinite(v).all() for v in ck.state("generator").values() if v.is_floating_point())


def test_micro_batch_must_divide_batch(tiny_cache, tmp_path):
    with pytest.raises(ConfigError, match=r"micro_batch_size \(3\) must divide the per-process batch \(4"):
        _train(tmp_path / "run", tiny_cache, **{"trainer.micro_batch_size": 3})


def test_periodic_evaluation_tracks_best(tiny_cache, tmp_path):
    run = tmp_path / "run"
    result = _train(run, tiny_cache, **{"eval.every": 2, "eval.metrics": ["color-texture"], "eval.num_samples": 8,
                                        "eval.track": "color_emd", "eval.track_mode": "min", "trainer.keep_last": 1})
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4, 6]
    best = min(evals, key=lambda r: r["color_emd"])
    assert read_pointer(run / "checkpoints", "BEST").name == f"step_{best['step']:08d}"
    assert result.metrics["eval/color_emd"] == pytest.approx(evals[-1]["color_emd"])
    kept = {p.name for p in list_checkpoints(run / "checkpoints")}
    assert kept == {"step_00000006", f"step_{best['step']:08d}"}  # keep_last 1 + BEST
    assert load_checkpoint(run / "checkpoints" / f"step_{best['step']:08d}").meta["best"] == pytest.approx(best["color_emd"])


def test_without_ema_the_generator_is_saved_and_loaded(tiny_cache, tmp_path):
    from gensynth.api import load_model

    run = tmp_path / "run"
    result = _train(run, tiny_cache, **{"trainer.ema_decay": None, "trainer.steps": 2, "trainer.sample_every": 2})
    assert "ema_decay" not in result.metrics
    ck = load_checkpoint(run)
    assert ck.state("generator_ema") is None and "generator_ema.safetensors" not in ck.meta["files"]
    assert (run / "samples" / "step_00000002.png").exists()
    m = load_model(run)  # ema=True falls back to the generator
    g = ck.state("generator")
    assert all(torch.equal(v, g[k]) for k, v in m.generator.state_dict().items()) and not m.generator.training
