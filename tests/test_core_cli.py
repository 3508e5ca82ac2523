"""The command line: help, plugin listing, model description, errors without tracebacks."""
from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from gensynth.cli.main import cli


def test_help_lists_command_groups():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for group in ("train", "generate", "paint", "evaluate", "segment", "datasets", "models", "plugins", "compare"):
        assert re.search(rf"^\s+{group}\s", result.output, re.M), f"{group} missing from gensynth --help"


def test_plugins_list_table_and_json():
    runner = CliRunner()
    table = runner.invoke(cli, ["plugins", "list"])
    assert table.exit_code == 0 and "oasis" in table.output and "register_discriminators" in table.output
    data = json.loads(runner.invoke(cli, ["plugins", "list", "--json"]).output)
    by_name = {p["name"]: p for p in data}
    assert by_name["gensynth"]["registered"]["objectives"] == ["bce", "hinge"]
    assert "oasis-unet" in by_name["oasis"]["registered"]["discriminators"]
    assert "demo" in by_name["datasets"]["registered"]["datasets"]


def test_models_describe_counts_full_size_oasis_on_cityscapes():
    result = CliRunner().invoke(cli, ["models", "describe", "oasis", "--data", "cityscapes", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["generator_parameters"] == 71_107_523
    assert info["discriminator_parameters"] == 22_251_364
    assert info["num_classes"] == 35 and info["optimiser"]["lr_g"] == 4e-4


def test_config_error_is_one_clear_line_and_exit_2():
    result = CliRunner().invoke(cli, ["models", "describe", "oasis", "--data", "demo", "--set", "optim.beta1=2"])
    assert result.exit_code == 2
    assert "optim.beta1 = 2 (from cli)" in result.output and "less than 1" in result.output
    assert "Traceback" not in result.output


def test_readme_quick_start_is_two_commands_and_ci_runs_the_test_one():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text().splitlines()
    assert readme[0] == "## Quick start"
    fence = readme.index("```bash")
    end = readme.index("```", fence + 1)
    commands = [l for l in readme[fence + 1:end] if l.strip()]
    assert len(commands) == 2
    assert "gensynth train --model oasis --data demo" in commands[0]
    test_cmd = commands[1].split("&&")[-1].strip()
    assert test_cmd in (root / ".ci" / "run").read_text()
