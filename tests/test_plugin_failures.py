"""A broken third-party plugin (fails to import, or its registration hook raises) is named once and skipped."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import CHILD_ENV


def _install(site, name: str, code: str) -> None:
    """Lay out a plugin as pip does: a module plus a .dist-info with its entry point."""
    (site / f"{name}.py").write_text(textwrap.dedent(code))
    info = site / f"{name}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[gensynth]\n{name} = {name}\n")


@pytest.fixture
def broken_site(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _install(site, "needs_missing_dep", """
        import gensynth_no_such_dependency  # not installed
    """)
    _install(site, "raises_on_register", """
        from gensynth.hookspecs import hookimpl

        @hookimpl
        def register_discriminators(register):
            register("half-done", object)
            raise RuntimeError("cannot find its weights")
    """)
    return site


def _gensynth(site, *args, **env_extra):
    env = {**os.environ, **CHILD_ENV, "PYTHONPATH": str(site), **env_extra}
    return subprocess.run([sys.executable, "-m", "gensynth", *args], env=env, capture_output=True, text=True,
                          timeout=180)


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def test_broken_plugins_are_named_once_and_skipped(broken_site):
    r = _gensynth(broken_site, "--help")
    assert r.returncode == 0, r.stderr
    assert "train" in r.stdout and "Traceback" not in r.stderr
    warned = _warnings(r.stderr)
    assert len(warned) == 1, r.stderr  # --help never fills the registries: only the import failure shows
    assert ("warning: plugin 'needs_missing_dep' (entry point 'needs_missing_dep', distribution needs_missing_dep) "
            "failed to import (ModuleNotFoundError: No module named 'gensynth_no_such_dependency'); it is skipped. "
            "Fix or uninstall it, or list the plugins to load in GENSYNTH_LOAD_PLUGINS") in warned[0]

    r = _gensynth(broken_site, "plugins", "list", "--json")
    assert r.returncode == 0, r.stderr
    listed = {p["name"]: p for p in json.loads(r.stdout)}
    assert listed["needs_missing_dep"]["status"] == "broken"
    assert "failed to import (ModuleNotFoundError" in listed["needs_missing_dep"]["problem"]
    assert listed["raises_on_register"]["status"] == "broken"
    assert listed["raises_on_register"]["problem"] == ("raised in its register_discriminators hook (RuntimeError: "
                                                       "cannot find its weights)")
    assert listed["oasis"]["status"] == "ok" and "oasis-unet" in listed["oasis"]["registered"]["discriminators"]
    # its registrations before raising are dropped with it
    assert all("half-done" not in p["registered"].get("discriminators", []) for p in listed.values())
    assert sorted(w.split("'")[1] for w in _warnings(r.stderr)) == ["needs_missing_dep", "raises_on_register"]

    r = _gensynth(broken_site, "plugins", "list")
    assert r.returncode == 0 and "broken" in r.stdout and "needs_missing_dep" in r.stdout


def test_only_a_command_that_needs_the_part_fails(broken_site, tmp_path):
    r = _gensynth(broken_site, "train", "--discriminator", "half-done", "--run-dir", str(tmp_path / "run"),
                  "--steps", "1")
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr
    assert "unknown discriminator 'half-done'" in errors[0]
    assert "skipped plugin(s) 'needs_missing_dep', 'raises_on_register' may have provided it" in errors[0]
    assert not (tmp_path / "run").exists()


def test_leaving_the_broken_plugin_out_silences_it(broken_site):
    r = _gensynth(broken_site, "plugins", "list", "--json", GENSYNTH_LOAD_PLUGINS="oasis,datasets")
    assert r.returncode == 0, r.stderr
    assert _warnings(r.stderr) == []
    assert sorted(p["name"] for p in json.loads(r.stdout)) == ["datasets", "gensynth", "oasis"]


def test_a_factory_that_raises_at_build_is_one_line_naming_the_part(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _install(site, "bad_factory", """
        from gensynth.hookspecs import hookimpl

        def build(num_classes, **options):
            raise KeyError("weights.pt")

        @hookimpl
        def register_discriminators(register):
            register("bad-d", build, description="raises at build")
    """)
    args = ("train", "--model", "oasis", "--data", "demo", "--discriminator", "bad-d", "--objective", "n+1",
            "--steps", "1", "--run-dir", str(tmp_path / "run"))
    r = _gensynth(site, *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert ("error: discriminator 'bad-d' (plugin 'bad_factory') failed to build (KeyError: 'weights.pt') with options "
            "{'num_classes': 11}: a bug in the plugin or an option it cannot take") in r.stderr, r.stderr
    r = _gensynth(site, *args, GENSYNTH_TRACEBACK="1")
    assert r.returncode != 0 and "Traceback" in r.stderr and "KeyError: 'weights.pt'" in r.stderr
