"""Evaluation during training never kills a run: every requirement is checked before step 1 (an error then, or a
warning and the metric skipped with eval.on_missing=skip), and a failure mid-run is logged and training goes on."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gensynth.checkpoint import list_checkpoints
from gensynth.cli.main import cli
from gensynth.config import resolve
from gensynth.errors import ConfigError
from gensynth.eval.fid import FID_WEIGHTS_NAME
from gensynth.eval.requirements import plan_evaluation

from conftest import tiny_overrides


def _args(run, cache, **extra) -> list[str]:
    args = ["train", "--model", "oasis", "--data", "demo", "--steps", "4", "--run-dir", str(run)]
    for k, v in tiny_overrides(run, cache, **{"trainer.sample_every": 4, "eval.num_samples": 4, **extra}).items():
        if k not in ("model.preset", "data.name", "trainer.steps", "trainer.run_dir"):
            args += ["--set", f"{k}={json.dumps(v)}"]
    return args


def _records(run, kind):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))


def test_missing_fid_weights_stop_the_run_before_step_one(tmp_path, tiny_cache, no_weights):
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, _args(run, tiny_cache, **{"eval.every": 2, "eval.metrics": ["fid", "kid"]}))
    assert res.exit_code == 2, res.output
    flat = " ".join(res.output.split())
    assert "cannot run the requested metrics (fid, kid)" in flat and FID_WEIGHTS_NAME in flat
    assert "eval.on_missing=skip" in flat and "Traceback" not in flat
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()  # nothing trained or logged


def test_on_missing_skip_warns_and_trains_with_the_other_metrics(tmp_path, tiny_cache, no_weights):
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, _args(run, tiny_cache, **{
        "eval.every": 2, "eval.metrics": ["fid", "ms-ssim", "lpips"], "eval.on_missing": "skip",
        "eval.diversity_samples": 2, "eval.track": "ms_ssim"}))
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert "evaluation skips fid" in flat and "evaluation skips lpips" in flat and "alexnet-owt-7be5be79.pth" in flat
    evals = _records(run, "eval")
    assert [r["step"] for r in evals] == [2, 4] and all(set(r) >= {"ms_ssim"} and "fid" not in r for r in evals)


def test_the_default_set_skips_fid_without_weights_and_miou_uses_the_live_discriminator(tmp_path, tiny_cache,
                                                                                        no_weights):
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, _args(run, tiny_cache, **{"eval.every": 4}))  # eval.metrics unset
    assert res.exit_code == 0, res.output
    assert "evaluation skips fid" in " ".join(res.output.split())
    assert set(_records(run, "eval")[0]) >= {"color_emd", "texture_chi2"}
    run2 = tmp_path / "run2"
    res = CliRunner().invoke(cli, _args(run2, tiny_cache, **{"eval.every": 4, "eval.metrics": ["miou"],
                                                             "eval.track": "miou", "eval.track_mode": "max"}))
    assert res.exit_code == 0, res.output
    (ev,) = _records(run2, "eval")
    assert ev["step"] == 4 and 0 <= ev["miou"] <= 1 and 0 <= ev["miou_real"] <= 1


def test_a_failure_during_evaluation_is_logged_and_training_continues(tmp_path, tiny_cache, monkeypatch):
    import gensynth.eval.evaluate as ev

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("colour histograms out of memory")

    monkeypatch.setattr(ev, "compare", broken)
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, _args(run, tiny_cache, **{"eval.every": 2, "eval.metrics": ["color-texture", "ms-ssim"],
                                                            "eval.diversity_samples": 2, "eval.track": "ms_ssim"}))
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert "evaluation of color-texture failed at step 2" in flat and "colour histograms out of memory" in flat
    (err,) = _records(run, "eval_error")
    assert err["step"] == 2 and err["failed"] == ["color-texture"]
    assert "out of memory" in err["errors"]["color-texture"]
    assert [r["step"] for r in _records(run, "eval")] == [2, 4]  # MS-SSIM still evaluated, training finished
    assert len(calls) == 1  # the failed metric is not retried at step 4
    assert [p.name for p in list_checkpoints(run / "checkpoints")][-1] == "step_00000004"


def test_plan_checks_packages_segmenter_and_size(tmp_path, tiny_cache, monkeypatch):
    import gensynth.eval.requirements as req
    from gensynth.build import resolve_parts

    cfg, _ = resolve(tiny_overrides(tmp_path / "r", tiny_cache, **{"eval.metrics": ["color-texture", "miou"]}))
    parts = resolve_parts(cfg)
    monkeypatch.setattr(req, "missing_package", lambda module: "scikit-image" if module == "skimage" else None)
    with pytest.raises(ConfigError) as err:
        plan_evaluation(cfg, parts)
    msg = str(err.value)
    assert "color-texture: needs the Python package scikit-image: pip install \"gensynth[eval]\"" in msg
    assert "miou: segmenter 'oasis-discriminator'" in msg and "needs a run" in msg
    warnings = []
    cfg.eval.on_missing = "skip"
    plan = plan_evaluation(cfg, parts, warn=warnings.append)
    assert plan.metrics == [] and set(plan.skipped) == {"color-texture", "miou"}
    assert len(warnings) == 2 and not any("eval.track" in w for w in warnings)  # eval.every = 0: nothing tracked
    cfg.eval.metrics = ["ms-ssim"]
    cfg.data.size = (8, 8)
    cfg.eval.on_missing = "error"
    with pytest.raises(ConfigError, match="ms-ssim: MS-SSIM needs images of at least 11x11"):
        plan_evaluation(cfg, parts)
