"""Options of registered parts: per-part namespaces and validation that rejects unknown keys.

Namespaces: ``model.discriminator_options`` (and ``generator_options``, ``objective_options``,
``eval.segmenter_options``) may hold one mapping per part name, ``{"oasis-unet": {"width": 0.25}, "patchgan":
{"ndf": 32}}``; only the mapping of the part that is used applies, so one configuration (or ``gensynth compare
--discriminators a,b``) carries options for several parts. Keys at the top level that are not a part's name are
the older flat form: they apply to whichever part is chosen, and a note says they are deprecated.

Validation: a part registered with ``options=Model`` (pydantic) is validated against it with ``extra="forbid"``
unless the model sets ``extra`` itself; a part without one is checked against its factory's (or class's)
keyword parameters.
"""
from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any, Iterable, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError

from gensynth.errors import ConfigError, suggest

#: keywords the core passes itself, per registry kind (not user options)
INJECTED = {
    "generator": ("num_classes",),
    "discriminator": ("num_classes",),
    "objective": ("dontcare",),
    "loss": ("weight",),
    "segmenter": ("num_classes", "checkpoint", "device"),
}

#: registry kind -> the config key of its options (for messages and notes)
OPTION_KEYS = {
    "generator": "model.generator_options",
    "discriminator": "model.discriminator_options",
    "objective": "model.objective_options",
    "segmenter": "eval.segmenter_options",
}


def select_part_options(options: Mapping[str, Any], name: str, part_names: Iterable[str]) -> dict[str, Any]:
    """The options that apply to part ``name``: the flat keys (those that are not a registered part's name with a
    mapping value), overridden by ``options[name]`` when it is a mapping."""
    names = set(part_names)
    flat = {k: v for k, v in options.items() if not (k in names and isinstance(v, Mapping))}
    own = options.get(name)
    return {**flat, **(dict(own) if isinstance(own, Mapping) else {})}


def flat_option_keys(options: Mapping[str, Any], part_names: Iterable[str]) -> list[str]:
    """The keys of ``options`` in the deprecated flat form (not a part's namespace)."""
    names = set(part_names)
    return sorted(k for k, v in options.items() if not (k in names and isinstance(v, Mapping)))


def deprecation_notes(provenance: Mapping[str, str], host, exclude: Iterable[str] = ()) -> list[str]:
    """Notes for flat option keys the user set (YAML or command line), naming the namespaced key to write.
    ``exclude``: keys not to note (those a command's own flags produce, e.g. ``--no-3d-noise``)."""
    notes, skip = [], set(exclude)
    for kind, key in OPTION_KEYS.items():
        names = set(host.registry(kind + "s").names())
        for dotted, source in sorted(provenance.items()):
            if not dotted.startswith(key + ".") or not (source == "cli" or source.startswith("yaml")) \
                    or dotted in skip:
                continue
            first = dotted[len(key) + 1:].split(".", 1)[0]
            if first not in names:
                notes.append(f"{dotted} (from {source}) is a flat option key, deprecated: it applies to whichever "
                             f"{kind} is chosen; write {key}.<{kind} name>.{dotted[len(key) + 1:]} instead")
    return notes


@lru_cache(maxsize=None)
def strict_schema(schema: type[BaseModel]) -> type[BaseModel]:
    """``schema`` with ``extra="forbid"`` unless it sets ``extra`` itself."""
    if "extra" in schema.model_config:
        return schema
    return type(schema.__name__, (schema,), {"model_config": ConfigDict(extra="forbid"), "__doc__": schema.__doc__,
                                             "__module__": schema.__module__})


def _callable_of(entry) -> Any:
    obj = entry.extra.get("cls") if entry.obj is None else entry.obj
    return obj


def accepted_keywords(obj: Any) -> tuple[set[str], bool]:
    """(keyword parameters, whether arbitrary keywords are accepted) of a factory or a class's ``__init__``.
    The interfaces' own ``**options`` (LossTerm, Objective) count as accepting nothing: a part that takes options
    declares them."""
    from gensynth.interfaces import LossTerm, Objective

    if isinstance(obj, type):
        init = obj.__init__
        if init in (LossTerm.__init__, Objective.__init__, object.__init__):
            params = inspect.signature(init).parameters
            return {p for p in params if p not in ("self", "options")}, False
        target = init
    else:
        target = obj
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return set(), True
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def validate_part_options(entry, options: Mapping[str, Any], kind: str, where: str | None = None) -> dict[str, Any]:
    """Validate the options given to a registered part; raise ConfigError naming the part, its plugin, each bad key
    and what it accepts. ``entry``: the part's :class:`gensynth.registry.Entry`; ``kind``: its registry's kind
    ("discriminator", "loss" ...); ``where``: the config key (default: the kind's options key)."""
    where = where or OPTION_KEYS.get(kind, "options")
    who = f"{kind} {entry.name!r} (plugin {entry.plugin!r})"
    schema = entry.options
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        try:
            return strict_schema(schema).model_validate(dict(options)).model_dump()
        except ValidationError as exc:
            lines = [f"invalid {where} for {who}:"]
            known = list(schema.model_fields)
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                msg = err["msg"]
                if err["type"] == "extra_forbidden":
                    msg = f"unknown option.{suggest(loc, known)} Options: {', '.join(known) or 'none'}"
                lines.append(f"  {where}.{loc} = {err.get('input')!r}: {msg}")
            raise ConfigError("\n".join(lines)) from None
    injected = set(INJECTED.get(kind, ()))
    names, var_kw = accepted_keywords(_callable_of(entry))
    if var_kw:
        return dict(options)
    known = sorted(names - injected)
    unknown = [k for k in options if k not in known]
    if unknown:
        lines = [f"invalid {where} for {who}:"]
        for k in unknown:
            lines.append(f"  {where}.{k} = {options[k]!r}: unknown option.{suggest(k, known)} "
                         f"Options: {', '.join(known) or 'none (it takes no options)'}")
        if not known:
            lines.append(f"  (a {kind} that reads options declares them: register(..., options=PydanticModel))")
        raise ConfigError("\n".join(lines))
    return dict(options)
