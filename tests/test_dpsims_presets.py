"""DP-SIMS presets and swapping: the demo preset's parts, ``gensynth compare`` with the dp-sims discriminator in an
OASIS run, and the plugin README's table covering every option."""
from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from conftest import tiny_overrides
from gensynth.build import resolve_parts
from gensynth.cli.main import cli
from gensynth.config import resolve


def test_demo_preset_needs_no_download_and_trains_the_tiny_backbone():
    cfg, provenance = resolve({"model.preset": "dp-sims", "data.name": "demo"})
    parts = resolve_parts(cfg)
    d = parts.discriminator_options
    assert d["backbone"] == "test_convnext" and d["pretrained"] is False and d["frozen_stages"] == 0
    assert parts.generator_options["num_res_blocks"] == 4 and cfg.trainer.steps == 300
    assert parts.objective == "focal-n+1" and set(parts.losses) == {"labelmix", "patch-nce", "diversity"}


def test_compare_oasis_unet_and_dp_sims_in_an_oasis_run(tmp_path, tiny_cache):
    drop = ("model.preset", "data.name", "trainer.run_dir", "trainer.steps", "model.discriminator_options")
    keep = {k: v for k, v in tiny_overrides(tmp_path / "unused", tiny_cache).items() if not k.startswith(drop)}
    keep["model.discriminator_options"] = {
        "oasis-unet": {"num_res_blocks": 2, "width": 0.0625},
        "dp-sims": {"backbone": "test_convnext", "pretrained": False, "decoder_channels": [8, 8, 8, 8],
                    "head_channels": 8}}
    sets = [x for k, v in keep.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    out = tmp_path / "cmp"
    result = CliRunner().invoke(cli, ["compare", "--model", "oasis", "--discriminators", "oasis-unet,dp-sims",
                                      "--data", "demo", "--steps", "3", "--metrics", "color-texture",
                                      "--out", str(out), *sets])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "compare.json").read_text())
    assert [r["discriminator"] for r in rows] == ["oasis-unet", "dp-sims"]
    assert rows[1]["objective"] == "n+1" and "labelmix" in rows[1]["losses"]  # OASIS's objective and LabelMix
    assert all(r["steps"] == 3 for r in rows)
    configs = [json.loads((out / n / "config.json").read_text())["config"] for n in ("oasis-unet", "dp-sims")]
    assert configs[0]["model"]["generator_options"] == configs[1]["model"]["generator_options"]


def test_readme_table_names_every_option():
    from gensynth_dpsims.losses import DiversityOptions, FocalNPlusOneOptions, PatchNCEOptions
    from gensynth_dpsims.options import DPSIMSDiscriminatorOptions, DPSIMSGeneratorOptions

    readme = (Path(__file__).parents[1] / "plugins" / "dpsims" / "README.md").read_text()
    named = set(re.findall(r"`([a-z_]+)`", readme))
    for model in (DPSIMSDiscriminatorOptions, DPSIMSGeneratorOptions, FocalNPlusOneOptions, PatchNCEOptions,
                  DiversityOptions):
        missing = set(model.model_fields) - named
        assert not missing, f"{model.__name__}: {sorted(missing)} not in the README"


def test_learning_benchmark_variants_resolve_with_and_without_diversity(tmp_path):
    import importlib.util
    import sys

    name = "gensynth_bench_learning"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / "learning.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    bl = sys.modules[name]
    for tiny in (False, True):
        settings = bl.Settings(models=("dp-sims", "dp-sims-nodiv"), tiny=tiny, out=tmp_path)
        with_div = resolve_parts(resolve(bl.run_overrides("dp-sims", settings, tmp_path / "a"))[0])
        without = resolve_parts(resolve(bl.run_overrides("dp-sims-nodiv", settings, tmp_path / "b"))[0])
        assert with_div.losses["diversity"] == 0.1 and "diversity" not in without.losses
        assert with_div.generator_options == without.generator_options
        assert with_div.discriminator_options["pretrained"] is False
