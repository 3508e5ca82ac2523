"""``gensynth train`` through click's CliRunner: flags map to config keys; the quick start leaves a usable run."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gensynth.checkpoint import list_checkpoints, load_checkpoint
from gensynth.cli.main import cli
from gensynth.cli.train_cmd import _flags_to_config
from gensynth.errors import ConfigError

from conftest import tiny_overrides


def test_flags_map_to_config_keys():
    got = _flags_to_config({
        "model": "oasis", "data": "demo", "data_root": "/d", "generator": "g", "discriminator": "patchgan",
        "objective": "hinge", "loss": ("vgg=10", "labelmix=2.5"), "no_3d_noise": True, "no_labelmix": False,
        "no_balancing": True, "paper": True, "steps": 7, "batch_size": 4, "precision": "bf16", "run_dir": "r",
        "init_from": "ck", "set_items": ("trainer.log_every=3", "model.loss_options.vgg={layers: 2}")})
    assert got == {
        "model.preset": "oasis", "data.name": "demo", "data.root": "/d", "model.generator": "g",
        "model.discriminator": "patchgan", "model.objective": "hinge", "trainer.steps": 7, "trainer.batch_size": 4,
        "trainer.precision": "bf16", "trainer.run_dir": "r", "trainer.init_from": "ck", "model.losses.vgg": 10.0,
        "model.losses.labelmix": 2.5, "model.generator_options.use_3d_noise": False,
        "model.objective_options.balancing": False, "model.values": "paper", "trainer.log_every": 3,
        "model.loss_options.vgg": {"layers": 2}}
    assert _flags_to_config({"no_labelmix": True})["model.losses.labelmix"] == 0.0
    with pytest.raises(ConfigError, match="--loss expects NAME=WEIGHT.*'labelmix'"):
        _flags_to_config({"loss": ("labelmix",)})
    with pytest.raises(ConfigError, match="--loss vgg: weight 'x' is not a number"):
        _flags_to_config({"loss": ("vgg=x",)})


def _set_args(overrides: dict) -> list[str]:
    args = []
    for k, v in overrides.items():
        if k not in ("model.preset", "data.name", "trainer.steps", "trainer.run_dir"):
            args += ["--set", f"{k}={json.dumps(v)}"]
    return args


def test_quick_start_command_leaves_samples_and_checkpoints(tmp_path, tiny_cache):
    run = tmp_path / "run"
    extra = _set_args(tiny_overrides(run, tiny_cache, **{"trainer.sample_every": 2}))
    res = CliRunner().invoke(cli, ["train", "--model", "oasis", "--data", "demo", "--steps", "4", "--run-dir",
                                   str(run), *extra])
    assert res.exit_code == 0, res.output
    assert f"done: step 4; run directory {run}" in res.output
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_00000002.png", "step_00000004.png"]
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000003", "step_00000004"]
    cfg = load_checkpoint(run).config()
    assert cfg.model.preset == "oasis" and cfg.trainer.steps == 4 and cfg.data.name == "demo"
    prov = json.loads((run / "config.json").read_text())["provenance"]
    assert prov["trainer.steps"] == "cli" and prov["optim.lr_g"] == "preset oasis for demo (official scripts)"
    # --resume on a finished run continues nothing but succeeds; on an empty directory it is a clear error
    res = CliRunner().invoke(cli, ["train", "--steps", "4", "--run-dir", str(run), "--resume", *extra])
    assert res.exit_code == 0 and "done: step 4" in res.output, res.output
    res = CliRunner().invoke(cli, ["train", "--steps", "4", "--run-dir", str(tmp_path / "none"), "--resume", *extra])
    assert res.exit_code == 2 and "--resume: no checkpoint in" in res.output


def test_bad_flag_values_are_one_line_errors(tmp_path):
    res = CliRunner().invoke(cli, ["train", "--model", "oasis", "--loss", "labelmix", "--run-dir", str(tmp_path)])
    assert res.exit_code == 2 and "--loss expects NAME=WEIGHT" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["train", "--model", "oasiss", "--run-dir", str(tmp_path)])
    assert res.exit_code == 2 and "Did you mean 'oasis'" in res.output
