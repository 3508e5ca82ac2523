"""Registries, the plugin host and its entry-point discovery."""
from __future__ import annotations

import pytest

from gensynth import hookimpl
from gensynth.errors import RegistryError
from gensynth.plugins import PluginHost
from gensynth.registry import Registry


def test_register_twice_names_both_plugins():
    reg = Registry("discriminator")
    reg.register("unet", object(), plugin="alpha")
    with pytest.raises(RegistryError) as exc:
        reg.register("unet", object(), plugin="beta")
    msg = str(exc.value)
    assert "'unet' is registered twice" in msg and "'alpha'" in msg and "'beta'" in msg


def test_unknown_name_lists_available_and_suggests():
    reg = Registry("discriminator")
    for name in ("oasis-unet", "patchgan", "timm-unet"):
        reg.register(name, object(), plugin="p")
    with pytest.raises(RegistryError) as exc:
        reg.get("patchgn")
    msg = str(exc.value)
    assert "unknown discriminator 'patchgn'" in msg
    assert "Did you mean 'patchgan'?" in msg
    assert "Available: oasis-unet, patchgan, timm-unet" in msg


def test_empty_registry_message():
    with pytest.raises(RegistryError, match=r"\(none: no plugin registered any\)"):
        Registry("segmenter").get("x")


class _Plugin:
    @hookimpl
    def register_objectives(self, register):
        from gensynth.builtin import HingeObjective

        register("hinge-copy", HingeObjective, description="copy")


def test_host_attributes_registrations_to_plugins():
    host = PluginHost(load_entry_points=False)
    host.register_plugin(_Plugin(), name="mine")
    reg = host.registry("objectives")
    assert reg.entry("hinge").plugin == "gensynth"
    assert reg.entry("hinge-copy").plugin == "mine"
    infos = {i.name: i for i in host.plugin_infos()}
    assert infos["mine"].hooks == ["register_objectives"]
    assert infos["mine"].registered == {"objectives": ["hinge-copy"]}
    host.unregister_plugin("mine")
    assert "hinge-copy" not in host.registry("objectives")


class _Clash:
    @hookimpl
    def register_objectives(self, register):
        from gensynth.builtin import BCEObjective

        register("hinge", BCEObjective)


def test_clash_between_plugins_is_an_error_naming_both():
    host = PluginHost(load_entry_points=False)
    host.register_plugin(_Clash(), name="clasher")
    with pytest.raises(RegistryError, match=r"'hinge' is registered twice: by plugin '(gensynth|clasher)' and by plugin '(gensynth|clasher)'"):
        host.registry("objectives")


def test_builtin_plugins_come_from_entry_points():
    host = PluginHost()
    names = {i.name: i for i in host.plugin_infos()}
    for plugin in ("oasis", "spade", "datasets", "timm-unet"):
        assert plugin in names, f"built-in plugin {plugin} not discovered through the gensynth entry points"
        assert names[plugin].distribution == "gensynth"


def test_load_plugins_env_restricts(monkeypatch):
    from gensynth import plugins

    monkeypatch.setenv("GENSYNTH_LOAD_PLUGINS", "")
    plugins.reset_host()
    try:
        assert [i.name for i in plugins.get_host().plugin_infos()] == ["gensynth"]
        monkeypatch.setenv("GENSYNTH_LOAD_PLUGINS", "datasets")
        plugins.reset_host()
        assert [i.name for i in plugins.get_host().plugin_infos()] == ["gensynth", "datasets"]
    finally:
        monkeypatch.delenv("GENSYNTH_LOAD_PLUGINS")
        plugins.reset_host()
