"""The one plugin manager: plugins discovered from the ``gensynth`` entry-point group.

Built-in plugins (OASIS, SPADE, datasets) arrive through the same entry points as any
third-party plugin; only the core's own generic parts (``gensynth.builtin``) are registered
directly, as llm and datasette do with their default plugins.

``GENSYNTH_LOAD_PLUGINS=a,b`` restricts loading to the entry points named ``a`` and ``b``
(or whose distribution is named so); an empty string loads none but the core.

A plugin that fails to import, or whose registration hook raises, is reported once (a
:class:`PluginWarning` naming it and ``GENSYNTH_LOAD_PLUGINS``) and skipped: every other command keeps
working, a lookup of a part it may have provided says so, and ``gensynth plugins list`` shows it as broken.
"""
from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from gensynth import hookspecs
from gensynth.errors import GensynthError
from gensynth.registry import Registry, make_register

ENTRY_POINT_GROUP = "gensynth"
CORE_PLUGIN_NAME = "gensynth"
REGISTRY_HOOKS = {
    "generators": "register_generators",
    "discriminators": "register_discriminators",
    "objectives": "register_objectives",
    "losses": "register_losses",
    "datasets": "register_datasets",
    "models": "register_models",
    "segmenters": "register_segmenters",
}
_KIND_SINGULAR = {
    "generators": "generator", "discriminators": "discriminator", "objectives": "objective",
    "losses": "loss", "datasets": "dataset", "models": "model", "segmenters": "segmenter",
}


class PluginWarning(UserWarning):
    """A plugin failed (import or registration hook) and was skipped."""


@dataclass
class PluginInfo:
    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    broken: str | None = None  # what went wrong when the plugin was skipped


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class PluginHost:
    """A pluggy manager plus the registries its hooks fill. Created lazily, once per process."""

    def __init__(self, load_entry_points: bool = True, only: list[str] | None = None):
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.dist_info: dict[str, tuple[str, str]] = {}
        self.broken: dict[str, PluginInfo] = {}
        self.registries: dict[str, Registry] = {k: Registry(_KIND_SINGULAR[k]) for k in REGISTRY_HOOKS}
        self._filled = False
        builtin = importlib.import_module("gensynth.builtin")
        self.pm.register(builtin, name=CORE_PLUGIN_NAME)
        if load_entry_points:
            self._load_entry_points(only)

    # -- loading -----------------------------------------------------------------------
    def _load_entry_points(self, only: list[str] | None) -> None:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
        seen: set[str] = set()
        for ep in eps:
            if ep.name in seen:  # the same distribution visible twice on sys.path
                continue
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            if only is not None and ep.name not in only and dist_name not in only:
                continue
            seen.add(ep.name)
            if dist is not None:
                self.dist_info[ep.name] = (dist_name, dist.version)
            try:
                module = ep.load()
            except Exception as exc:  # a broken third-party plugin names itself and is skipped
                self._mark_broken(ep.name, ep.value, f"failed to import ({_one_line(exc)})")
                continue
            self.pm.register(module, name=ep.name)

    def _mark_broken(self, name: str, module: str, problem: str) -> None:
        """Record a skipped plugin and warn once, naming it and GENSYNTH_LOAD_PLUGINS."""
        dist, version = self.dist_info.get(name, (None, None))
        self.broken[name] = PluginInfo(name, module, dist, version, broken=problem)
        where = f"entry point {module!r}" + (f", distribution {dist}" if dist else "")
        warnings.warn(f"plugin {name!r} ({where}) {problem}; it is skipped. Fix or uninstall it, or list the plugins "
                      f"to load in GENSYNTH_LOAD_PLUGINS (comma-separated names)", PluginWarning, stacklevel=3)
        for registry in self.registries.values():
            registry.note = self._missing_note()

    def _missing_note(self) -> str:
        if not self.broken:
            return ""
        names = ", ".join(repr(n) for n in sorted(self.broken))
        return f" (skipped plugin(s) {names} may have provided it: see `gensynth plugins list`)"

    def register_plugin(self, obj: Any, name: str) -> None:
        """Register an object with hook implementations (tests, notebooks). Rebuilds registries."""
        self.pm.register(obj, name=name)
        self._reset()

    def unregister_plugin(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._reset()

    def _reset(self) -> None:
        self.registries = {k: Registry(_KIND_SINGULAR[k]) for k in REGISTRY_HOOKS}
        for registry in self.registries.values():
            registry.note = self._missing_note()
        self._filled = False

    # -- registries --------------------------------------------------------------------
    def _fill(self) -> None:
        if self._filled:
            return
        self._filled = True  # set first: a failing hook must not be retried half-filled
        try:
            for kind, hook_name in REGISTRY_HOOKS.items():
                caller = getattr(self.pm.hook, hook_name)
                # call each implementation alone, so we know which plugin registered what
                for impl in reversed(caller.get_hookimpls()):
                    try:
                        impl.function(register=make_register(self.registries[kind], impl.plugin_name))
                    except GensynthError:  # e.g. two plugins registering one name: an error naming both
                        raise
                    except Exception as exc:
                        if impl.plugin_name == CORE_PLUGIN_NAME:
                            raise
                        self._skip_raising_plugin(impl.plugin_name, hook_name, exc)
                        return self._fill()  # again without it (its earlier registrations are dropped too)
        except Exception:
            self._reset()
            raise

    def _skip_raising_plugin(self, name: str, hook_name: str, exc: Exception) -> None:
        plugin = self.pm.get_plugin(name)
        self.pm.unregister(name=name)
        self._mark_broken(name, getattr(plugin, "__name__", type(plugin).__name__),
                          f"raised in its {hook_name} hook ({_one_line(exc)})")
        self._reset()

    def add_commands(self, cli) -> None:
        """Call every plugin's ``register_commands`` hook; a plugin whose hook raises is skipped, named."""
        for impl in reversed(self.pm.hook.register_commands.get_hookimpls()):
            try:
                impl.function(cli=cli)
            except Exception as exc:
                if impl.plugin_name == CORE_PLUGIN_NAME:
                    raise
                self._skip_raising_plugin(impl.plugin_name, "register_commands", exc)

    def registry(self, kind: str) -> Registry:
        self._fill()
        return self.registries[kind]

    def plugin_infos(self) -> list[PluginInfo]:
        self._fill()
        infos = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda kv: (kv[0] != CORE_PLUGIN_NAME, kv[0])):
            dist, version = self.dist_info.get(name, (None, None))
            if name == CORE_PLUGIN_NAME:
                from gensynth import __version__
                dist, version = "gensynth", __version__
            hooks = sorted(c.name for c in (self.pm.get_hookcallers(plugin) or []))
            registered = {k: self.registries[k].by_plugin(name) for k in REGISTRY_HOOKS}
            infos.append(PluginInfo(name, getattr(plugin, "__name__", type(plugin).__name__), dist, version, hooks,
                                    {k: v for k, v in registered.items() if v}))
        return infos + [self.broken[n] for n in sorted(self.broken)]

    def versions(self) -> dict[str, str]:
        return {i.name: f"{i.distribution or '?'}=={i.version or '?'}" for i in self.plugin_infos() if not i.broken}


def _only_from_env() -> list[str] | None:
    value = os.environ.get("GENSYNTH_LOAD_PLUGINS")
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


_HOST: PluginHost | None = None


def get_host() -> PluginHost:
    """The process's plugin host (created on first use, honouring GENSYNTH_LOAD_PLUGINS)."""
    global _HOST
    if _HOST is None:
        _HOST = PluginHost(only=_only_from_env())
    return _HOST


def reset_host() -> None:
    """Forget the plugin host; the next :func:`get_host` rediscovers entry points (tests)."""
    global _HOST
    _HOST = None
    importlib.invalidate_caches()


def registry(kind: str) -> Registry:
    return get_host().registry(kind)
