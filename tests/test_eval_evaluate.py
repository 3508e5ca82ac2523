"""evaluate()/evaluate_generator on the tiny trained run, and ``gensynth evaluate`` (report, protocol, weights)."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from gensynth.cli.main import cli
from gensynth.errors import ConfigError
from gensynth.eval.evaluate import EvalTools, evaluate, evaluate_generator, parse_metrics
from gensynth.eval.fid import StatsCache
from eval_reference.inception import FIDInceptionV3  # a network with the layout of the official weights file

from gensynth.eval.fid import FID_WEIGHTS_NAME
from gensynth.eval.segmenters import DiscriminatorSegmenter


class TinyFeatures(nn.Module):
    """A small random feature network standing in for InceptionV3 (B, 3, H, W) -> (B, 6)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, stride=2)

    def forward(self, x):
        return torch.relu(self.conv(x)).mean((2, 3))


@pytest.fixture(scope="module")
def loaded(tiny_run):
    from gensynth.api import load_model

    return load_model(tiny_run.run_dir, with_discriminator=True)


def _cfg(loaded, tmp_path, **eval_opts):
    doc = loaded.config.model_dump()
    doc["eval"].update({"num_samples": 8, "stats_dir": str(tmp_path / "stats"), **eval_opts})
    return type(loaded.config).model_validate(doc)


def test_parse_metrics():
    assert parse_metrics("fid, miou,colour-texture,pr") == ["fid", "miou", "color-texture", "prec-recall"]
    assert parse_metrics("diversity,lpips,kid") == ["ms-ssim", "lpips", "kid"]  # diversity = MS-SSIM, no weights
    assert parse_metrics(None) == ["fid", "color-texture"]  # the one default set
    with pytest.raises(ConfigError, match="unknown metric 'fdi'.*Did you mean 'fid'"):
        parse_metrics("fdi")


def test_evaluate_all_metrics_on_tiny_run(loaded, tmp_path):
    from gensynth.data.loader import eval_batches
    from gensynth.eval.fid import FeatureStats

    cfg = _cfg(loaded, tmp_path, diversity_samples=3)
    from gensynth.eval.diversity import LPIPSDistance, lpips_model

    torch.manual_seed(1)
    lp = LPIPSDistance(lpips_model("alex"), "alex")  # random backbone, the package's linear layers
    tools = EvalTools(feature_net=TinyFeatures(), segmenter=DiscriminatorSegmenter(loaded.discriminator, 11), lpips=lp)
    rep = evaluate(loaded.generator, loaded.parts, cfg, device="cpu", tools=tools, batch_size=4,
                   metrics=["fid", "kid", "prec-recall", "miou", "ms-ssim", "lpips", "color-texture"])
    m = rep.metrics
    assert rep.protocol["num_images"] == 8 and not rep.errors
    assert m["fid"] > 0 and 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
    assert m["kid"] > -1 and m["kid_std"] >= 0 and rep.protocol["kid"]["subset_size"] == 8  # clipped to 8 samples
    assert rep.protocol["kid"]["subsets"] == 100
    assert 0 <= m["miou"] <= 1 and 0 <= m["miou_real"] <= 1
    assert 0 < m["ms_ssim"] <= 1 and m["lpips"] > 0
    assert m["color_emd"] > 0 and 0 < m["texture_chi2"] <= 1
    assert set(rep.per_class["iou"]) <= {c.name for c in loaded.parts.dataset.classes[1:]}  # don't-care excluded
    assert rep.protocol["miou"]["id_set"].startswith("11 model classes")
    # the real statistics were cached; a second run reuses them and gives the same FID
    assert rep.protocol["fid"]["real_stats_cached"] is False
    again = evaluate(loaded.generator, loaded.parts, cfg, device="cpu", tools=tools, batch_size=4, metrics=["fid"])
    assert again.protocol["fid"]["real_stats_cached"] is True
    assert again.metrics["fid"] == pytest.approx(m["fid"], rel=1e-9)
    # reference: FID recomputed by hand from the same real features and the same fakes
    real = FeatureStats()
    for b in eval_batches(cfg.data, loaded.parts.dataset, batch_size=4, limit=8):
        real.update(tools.feature_net(b.image))
    cached = StatsCache(cfg.eval.stats_dir)
    files = list(cached.directory.glob("demo-val-32x32-n8-*.npz"))
    assert len(files) == 1
    import numpy as np

    z = np.load(files[0])
    np.testing.assert_allclose(z["mu"], real.mean_cov()[0], rtol=1e-5, atol=1e-7)


def test_evaluate_generator_contract_is_deterministic(loaded, tmp_path):
    cfg = _cfg(loaded, tmp_path)
    tools = EvalTools(feature_net=TinyFeatures(), stats_cache=StatsCache(tmp_path / "s"))
    g = loaded.generator.train()  # the trainer may pass a module in train mode: evaluation switches to eval
    a = evaluate_generator(g, loaded.parts, cfg, device="cpu", metrics=["fid", "color-texture"], tools=tools)
    assert g.training  # mode restored
    b = evaluate_generator(g, loaded.parts, cfg, device="cpu", metrics=["fid", "color-texture"], tools=tools)
    g.eval()
    assert set(a) == {"fid", "color_emd", "texture_chi2", "color_texture_classes"}
    assert a == b


def _fake_fid_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / FID_WEIGHTS_NAME
    torch.save(FIDInceptionV3().state_dict(), path)
    return path


def test_evaluate_cli_fid_protocol_and_missing_weights(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    r = CliRunner().invoke(cli, ["evaluate", "-c", str(tiny_run.run_dir), "--metrics", "fid", "--device", "cpu",
                                 "--num-samples", "2"])
    assert r.exit_code == 2
    flat = " ".join(r.output.split())
    assert FID_WEIGHTS_NAME in flat and "github.com/mseitzer/pytorch-fid/releases" in flat
    assert "torch-home/hub/checkpoints" in flat.replace(" ", "")
    assert "eval.on_missing=skip" in flat

    weights = _fake_fid_weights(tmp_path)
    out = tmp_path / "report.json"
    # prec-recall and KID run the real InceptionV3 path (weights file, pool3, cache) without the 2048x2048 square
    # root; the Fréchet distance itself is covered above and in test_eval_metrics.py
    args = ["evaluate", "-c", str(tiny_run.run_dir), "--metrics", "prec-recall,kid,color-texture", "--device", "cpu",
            "--num-samples", "4", "--batch-size", "4", "--out", str(out), "--set", f"eval.fid_weights={weights}",
            "--set", f"eval.stats_dir={tmp_path / 'stats'}"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert 0 <= doc["metrics"]["precision"] <= 1 and doc["metrics"]["color_emd"] >= 0
    assert doc["protocol"]["fid"]["features"] == "pool3 2048-d" and doc["protocol"]["num_images"] == 4
    assert doc["protocol"]["fid"]["backend"] == "pytorch-fid InceptionV3" and doc["protocol"]["prec_recall"]["k"] == 3
    assert doc["protocol"]["kid"]["subset_size"] == 4 and "kid" in doc["metrics"]
    assert doc["protocol"]["ema"] is True and doc["protocol"]["resolution"] == [32, 32]
    assert "precision" in r.output  # the rich table


def test_evaluate_cli_miou_with_run_discriminator(tiny_run, tmp_path):
    out = tmp_path / "r.json"
    r = CliRunner().invoke(cli, ["evaluate", "-c", str(tiny_run.run_dir), "--metrics", "miou", "--device", "cpu",
                                 "--num-samples", "4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["protocol"]["miou"]["segmenter"] == "oasis-discriminator"
    assert doc["protocol"]["miou"]["input_resolution"] == [32, 32]
    assert 0 <= doc["metrics"]["miou"] <= 1
    assert all(0 <= v <= 1 for v in doc["per_class"]["iou"].values())
    r = CliRunner().invoke(cli, ["evaluate", "-c", str(tiny_run.run_dir), "--metrics", "miuo"])
    assert r.exit_code == 2 and "Did you mean 'miou'" in r.output


def test_evaluate_cli_default_set_skips_what_lacks_weights_and_diversity_needs_none(tiny_run, tmp_path, monkeypatch):
    """No --metrics: the default set (fid, color-texture); without the FID weights fid is skipped with a warning
    that names the file, and colour/texture is computed. --metrics diversity is MS-SSIM: no weights at all."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    out = tmp_path / "r.json"
    r = CliRunner().invoke(cli, ["evaluate", "-c", str(tiny_run.run_dir), "--device", "cpu", "--num-samples", "4",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())
    assert "evaluation skips fid" in flat and FID_WEIGHTS_NAME in flat
    doc = json.loads(out.read_text())
    assert set(doc["metrics"]) == {"color_emd", "texture_chi2", "color_texture_classes"}
    assert FID_WEIGHTS_NAME in doc["protocol"]["skipped"]["fid"]
    r = CliRunner().invoke(cli, ["evaluate", "-c", str(tiny_run.run_dir), "--device", "cpu", "--num-samples", "2",
                                 "--metrics", "diversity", "--set", "eval.diversity_samples=2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert set(doc["metrics"]) == {"ms_ssim"} and 0 < doc["metrics"]["ms_ssim"] <= 1
    r = CliRunner().invoke(cli, ["evaluate", "-c", str(tiny_run.run_dir), "--device", "cpu", "--metrics", "lpips"])
    assert r.exit_code == 2 and "alexnet-owt-7be5be79.pth" in " ".join(r.output.split())


def test_a_failing_metric_is_recorded_and_the_others_still_run(loaded, tmp_path, monkeypatch):
    import gensynth.eval.evaluate as ev

    def broken(*args, **kwargs):
        raise RuntimeError("histogram exploded")

    monkeypatch.setattr(ev, "compare", broken)
    cfg = _cfg(loaded, tmp_path)
    tools = EvalTools(feature_net=TinyFeatures(), stats_cache=StatsCache(tmp_path / "s"))
    rep = evaluate(loaded.generator, loaded.parts, cfg, device="cpu", metrics=["fid", "color-texture"], tools=tools,
                   on_error="record")
    assert set(rep.metrics) == {"fid"} and rep.errors == {"color-texture": "RuntimeError: histogram exploded"}
    assert rep.to_json()["errors"] == rep.errors and rep.protocol["failed"] == ["color-texture"]
    with pytest.raises(RuntimeError, match="histogram exploded"):
        evaluate(loaded.generator, loaded.parts, cfg, device="cpu", metrics=["color-texture"], tools=tools)
