"""``gensynth compare``: one generator, several discriminators, same seed and data, one table."""
from __future__ import annotations

import csv
import json

from click.testing import CliRunner

from conftest import tiny_overrides
from gensynth.cli.main import cli


def _sets(tmp_path, tiny_cache, drop=()):
    drop = ("model.preset", "data.name", "trainer.run_dir", "trainer.steps", *drop)
    keep = {k: v for k, v in tiny_overrides(tmp_path / "unused", tiny_cache).items() if not k.startswith(drop)}
    return [x for k, v in keep.items() for x in ("--set", f"{k}={json.dumps(v)}")]


def test_compare_two_discriminators_on_demo(tmp_path, tiny_cache):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(cli, ["compare", "--model", "oasis", "--discriminators", "oasis-unet,oasis-unet-projection",
                                      "--data", "demo", "--steps", "4", "--metrics", "color-texture",
                                      "--out", str(out), *_sets(tmp_path, tiny_cache)])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "compare.json").read_text())
    assert [r["discriminator"] for r in rows] == ["oasis-unet", "oasis-unet-projection"]
    assert rows[0]["objective"] == "n+1" and rows[1]["objective"] == "bce"  # the objective follows the discriminator
    assert "labelmix" in rows[0]["losses"]
    for r in rows:
        assert r["steps"] == 4
        scores = {k: v for k, v in r.items() if isinstance(v, float)}
        assert scores and all(v == v for v in scores.values()), r  # metrics present and not NaN
    with open(out / "compare.csv") as f:
        assert [row["discriminator"] for row in csv.DictReader(f)] == ["oasis-unet", "oasis-unet-projection"]
    assert "oasis-unet-projection" in result.output
    # same seed, data and generator; only the discriminator (and its objective) differ
    configs = [json.loads((out / name / "config.json").read_text())["config"] for name in ("oasis-unet", "oasis-unet-projection")]
    assert configs[0]["trainer"]["seed"] == configs[1]["trainer"]["seed"]
    assert configs[0]["data"] == configs[1]["data"]
    assert configs[0]["model"]["generator_options"] == configs[1]["model"]["generator_options"]
    assert configs[1]["model"]["discriminator"] == "oasis-unet-projection"


def test_compare_rejects_an_incompatible_run_before_training(tmp_path, tiny_cache):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(cli, ["compare", "--model", "oasis", "--discriminators", "oasis-unet,patchgan",
                                      "--data", "demo", "--steps", "4", "--out", str(out),
                                      "--set", "model.losses.labelmix=10",
                                      *_sets(tmp_path, tiny_cache, drop=("model.discriminator_options",))])
    assert result.exit_code == 2
    assert "labelmix" in result.output and "per-pixel" in result.output
    assert not (out / "oasis-unet").exists(), "nothing may be trained when one combination is invalid"


def test_compare_checks_evaluation_requirements_before_training(tmp_path, tiny_cache, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    out = tmp_path / "cmp"
    result = CliRunner().invoke(cli, ["compare", "--discriminators", "oasis-unet", "--data", "demo", "--steps", "2",
                                      "--metrics", "lpips,miou", "--out", str(out), *_sets(tmp_path, tiny_cache)])
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert "cannot run the requested metric (lpips)" in flat and "alexnet-owt-7be5be79.pth" in flat
    assert not out.exists()  # nothing trained: mIoU (the run's discriminator, built after training) passed the check


def test_compare_swaps_fpse_into_an_oasis_run_with_hinge(tmp_path, tiny_cache):
    """FPSE (cc-fpse plugin) next to OASIS' own U-Net: the objective follows it (hinge), LabelMix is dropped."""
    out = tmp_path / "cmp"
    sets = [*_sets(tmp_path, tiny_cache, drop=("model.discriminator_options",)),
            "--set", "model.discriminator_options.oasis-unet.num_res_blocks=2",
            "--set", "model.discriminator_options.oasis-unet.width=0.0625",
            "--set", "model.discriminator_options.fpse.ndf=4", "--set", "data.size=[64, 64]"]
    result = CliRunner().invoke(cli, ["compare", "--model", "oasis", "--discriminators", "oasis-unet,fpse",
                                      "--data", "demo", "--steps", "2", "--metrics", "color-texture",
                                      "--out", str(out), *sets])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "compare.json").read_text())
    assert [r["discriminator"] for r in rows] == ["oasis-unet", "fpse"]
    assert rows[0]["objective"] == "n+1" and rows[1]["objective"] == "hinge"
    assert "labelmix" in rows[0]["losses"] and "labelmix" not in rows[1]["losses"]
    parts = json.loads((out / "fpse" / "config.json").read_text())["parts"]
    assert parts["discriminator_options"]["ndf"] == 4
    assert any("objective 'hinge' follows discriminator 'fpse'" in n for n in parts["notes"])
