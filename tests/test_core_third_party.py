"""A third-party plugin installed through a real entry point (a .dist-info on sys.path)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gensynth-plugin-example"


@pytest.fixture
def installed_example(tmp_path, monkeypatch):
    """Install the docs' example plugin the way pip lays it out: package + dist-info with entry_points.txt."""
    site = tmp_path / "site"
    shutil.copytree(EXAMPLE / "gensynth_example", site / "gensynth_example")
    info = site / "gensynth_example-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gensynth-example\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[gensynth]\nexample = gensynth_example\n")
    monkeypatch.syspath_prepend(str(site))
    from gensynth import plugins

    plugins.reset_host()
    yield site
    plugins.reset_host()


def test_example_plugin_listed_and_selectable(installed_example):
    from gensynth.cli.main import cli

    result = CliRunner().invoke(cli, ["plugins", "list", "--json"])
    assert result.exit_code == 0, result.output
    listed = {p["name"]: p for p in json.loads(result.output)}
    assert listed["example"]["distribution"] == "gensynth-example"
    assert listed["example"]["version"] == "0.1.0"
    assert listed["example"]["hooks"] == ["register_datasets", "register_discriminators", "register_losses",
                                          "register_segmenters"]
    assert listed["example"]["registered"] == {"discriminators": ["tiny-fcn"], "losses": ["logit-matching"],
                                               "datasets": ["example-shapes"], "segmenters": ["example-colour"]}

    from gensynth.build import build_discriminator, resolve_parts
    from gensynth.config import resolve

    cfg, prov = resolve({"model.preset": "oasis", "data.name": "demo", "model.discriminator": "tiny-fcn",
                         "model.discriminator_options": {"width": 4, "depth": 1}})
    assert prov["model.discriminator"] == "cli"
    parts = resolve_parts(cfg)
    d = build_discriminator(parts)
    assert type(d).__module__ == "gensynth_example"
    out = d(torch.zeros(2, 3, 16, 16))
    assert out.logits.shape == (2, parts.num_classes + 1, 16, 16)
    # its options are validated against the plugin's own schema
    from gensynth.errors import ConfigError

    bad, _ = resolve({"model.discriminator": "tiny-fcn", "model.discriminator_options": {"width": 0}})
    with pytest.raises(ConfigError, match=r"model.discriminator_options.width = 0"):
        resolve_parts(bad)


def test_restricting_plugins_hides_the_example(installed_example, monkeypatch):
    from gensynth import plugins

    monkeypatch.setenv("GENSYNTH_LOAD_PLUGINS", "oasis,datasets")
    plugins.reset_host()
    names = [i.name for i in plugins.get_host().plugin_infos()]
    assert "example" not in names and "oasis" in names


def test_installed_example_passes_plugins_check(installed_example):
    """Installed through its entry point, the example's parts pass ``gensynth plugins check example`` (its dataset
    read from the files shipped in the package)."""
    from gensynth.cli.main import cli

    result = CliRunner().invoke(cli, ["plugins", "check", "example", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output[result.output.index("["):])
    assert {r["name"] for r in rows} == {"tiny-fcn", "logit-matching", "example-shapes", "example-colour"}
    assert all(r["status"] == "ok" for r in rows), rows
    samples = [r for r in rows if r["check"] == "samples"][0]
    assert samples["detail"] == "2 samples of split 'train'"
