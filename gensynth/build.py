"""Build the parts of a run from its configuration, checking that they fit together.

Everything is looked up by name in the registries; the core never imports a plugin.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gensynth.config import RunConfig
from gensynth.contracts import (ContractError, check_discriminator_module, check_generator_module,
                                check_objective_accepts, part_ref)
from gensynth.errors import ConfigError, GensynthError, IncompatibleError
from gensynth.interfaces import (Capability, DatasetSpec, Discriminator, Generator, LossTerm, ModelPreset,
                                 Objective, TrainingMethod, discriminator_capabilities)
from gensynth.options import select_part_options, validate_part_options
from gensynth.plugins import PluginHost, get_host


@dataclass
class Parts:
    """Resolved names and options of every part of a run (before any network is built)."""

    preset: ModelPreset
    dataset: DatasetSpec
    generator: str
    generator_options: dict[str, Any]
    discriminator: str
    discriminator_options: dict[str, Any]
    objective: str
    objective_options: dict[str, Any]
    losses: dict[str, float]
    loss_options: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        """Number of one-hot label channels the networks see (the dataset's model classes)."""
        return self.dataset.num_classes

    @property
    def dontcare_last(self) -> bool:
        """True when the model wants the don't-care class as the last channel (SPADE) instead of
        the dataset's own index (OASIS: class 0). The loader rolls label ids accordingly."""
        return self.preset.dontcare == "extra-last" and self.dataset.dontcare is not None

    @property
    def dontcare_index(self) -> int | None:
        """Index of the don't-care channel in what the networks see, or None."""
        if self.dataset.dontcare is None:
            return None
        return self.num_classes - 1 if self.dontcare_last else self.dataset.dontcare


def part_options(options: dict[str, Any], name: str, registry) -> dict[str, Any]:
    """The options of part ``name`` from a ``*_options`` mapping (its namespace over the flat keys)."""
    return select_part_options(options, name, registry.names())


def resolve_parts(cfg: RunConfig, host: PluginHost | None = None) -> Parts:
    """Names and validated options of every part, with the swapping rules applied:

    * the objective follows a swapped discriminator: when the user names a discriminator but no
      objective and the preset's objective cannot score it, the discriminator's
      ``default_objective`` is used (noted in ``Parts.notes``);
    * the preset's own loss terms that a swapped discriminator cannot serve (LabelMix needs
      per-pixel outputs) are dropped with a note; terms the user asked for are never dropped:
      an incompatible one is an error saying why and what would work.
    """
    host = host or get_host()
    preset: ModelPreset = host.registry("models").get(cfg.model.preset)
    dataset: DatasetSpec = host.registry("datasets").get(cfg.data.name)
    if hasattr(dataset, "for_root"):  # datasets whose classes come from data.root (folder)
        from gensynth.data.loader import configure_spec

        dataset = configure_spec(dataset, cfg.data)
    m = cfg.model
    notes: list[str] = []
    g_name = m.generator or preset.generator.name
    d_name = m.discriminator or preset.discriminator.name
    d_entry = host.registry("discriminators").entry(d_name)
    g_entry = host.registry("generators").entry(g_name)
    d_cls = discriminator_class(d_entry)
    o_name = m.objective or preset.objective.name
    if m.objective is None and d_cls is not None and d_name != preset.discriminator.name:
        o_cls = host.registry("objectives").get(o_name)
        if d_cls.output_kind not in o_cls.accepts and d_entry.extra.get("default_objective"):
            o_name = d_entry.extra["default_objective"]
            notes.append(f"objective {o_name!r} follows discriminator {d_name!r} "
                         f"(the preset's {preset.objective.name!r} cannot score its {d_cls.output_kind.value!r} output)")
    # options from the preset apply only when the part is the preset's own
    g_reg, d_reg, o_reg = (host.registry(k) for k in ("generators", "discriminators", "objectives"))
    g_opts = {**(preset.generator.options if g_name == preset.generator.name else {}),
              **part_options(m.generator_options, g_name, g_reg)}
    d_opts = {**(preset.discriminator.options if d_name == preset.discriminator.name else {}),
              **part_options(m.discriminator_options, d_name, d_reg)}
    o_opts = {**(preset.objective.options if o_name == preset.objective.name else {}),
              **part_options(m.objective_options, o_name, o_reg)}
    o_entry = o_reg.entry(o_name)
    loss_reg = host.registry("losses")
    losses: dict[str, float] = {}
    for name, weight in {**preset.losses, **m.losses}.items():
        if not weight:
            continue
        term_cls = loss_reg.get(name)
        user_set = name in m.requested_losses
        if not user_set and d_cls is not None and d_name != preset.discriminator.name:
            if _missing_capabilities(term_cls, d_cls):
                notes.append(f"preset loss {name!r} dropped: discriminator {d_name!r} does not provide "
                             f"{', '.join(c.value for c in _missing_capabilities(term_cls, d_cls))}")
                continue
        losses[name] = float(weight)
    loss_options = {name: validate_part_options(loss_reg.entry(name), m.loss_options.get(name, {}), "loss",
                                                f"model.loss_options.{name}")
                    for name in losses}
    parts = Parts(preset, dataset, g_name, validate_part_options(g_entry, g_opts, "generator"),
                  d_name, validate_part_options(d_entry, d_opts, "discriminator"),
                  o_name, validate_part_options(o_entry, o_opts, "objective"), losses,
                  {**dict(m.loss_options), **{k: v for k, v in loss_options.items() if v}}, notes)
    check_compatibility(parts, host)
    return parts


def _missing_capabilities(term_cls, d_cls) -> list[Capability]:
    caps = discriminator_capabilities(d_cls)
    return [c for c in term_cls.requires if c in (Capability.PIXEL_OUTPUT, Capability.FEATURES) and c not in caps]


def discriminator_class(entry) -> type[Discriminator] | None:
    """The Discriminator class of a registry entry (its ``cls=`` or the registered class), or None for a factory
    that does not declare it."""
    cls = entry.extra.get("cls") or entry.obj
    return cls if isinstance(cls, type) and issubclass(cls, Discriminator) else None


def check_compatibility(parts: Parts, host: PluginHost | None = None) -> None:
    """Reject combinations that cannot train, saying why and what would work."""
    host = host or get_host()
    d_reg, o_reg, l_reg = host.registry("discriminators"), host.registry("objectives"), host.registry("losses")
    d_cls = discriminator_class(d_reg.entry(parts.discriminator))
    if d_cls is None:
        return  # a factory that does not declare its class: checked when built
    o_cls = o_reg.get(parts.objective)
    kind = d_cls.output_kind
    if kind not in o_cls.accepts:
        fitting = [n for n in o_reg.names() if kind in o_reg.get(n).accepts]
        raise IncompatibleError(
            f"objective {parts.objective!r} cannot score discriminator {parts.discriminator!r}: it outputs "
            f"{kind.value!r} but the objective accepts {sorted(k.value for k in o_cls.accepts)}. "
            f"Objectives that fit: {', '.join(fitting) or 'none'} (--objective NAME)")
    for name in parts.losses:
        term_cls = l_reg.get(name)
        missing = _missing_capabilities(term_cls, d_cls)
        if missing:
            fitting = [n for n in d_reg.names()
                       if (c := discriminator_class(d_reg.entry(n))) and set(missing) <= discriminator_capabilities(c)]
            raise IncompatibleError(
                f"loss {name!r} needs {', '.join(c.value for c in missing)}, which discriminator "
                f"{parts.discriminator!r} ({kind.value}) does not provide. Either drop it "
                f"(--set model.losses.{name}=0) or use a discriminator that provides it: {', '.join(fitting) or 'none'}")
        if Capability.STYLE_IMAGE in term_cls.requires or Capability.GENERATOR_AUX in term_cls.requires:
            g_entry = host.registry("generators").entry(parts.generator)
            if not parts.generator_options.get("use_vae", False) and not g_entry.extra.get("style_encoder"):
                raise IncompatibleError(
                    f"loss {name!r} needs a generator with a style encoder (mu, logvar outputs); generator "
                    f"{parts.generator!r} has none. Set model.generator_options.use_vae=true or drop the loss")


def _call_factory(host: PluginHost, kind: str, name: str, factory, kwargs: dict[str, Any]):
    """``factory(**kwargs)``; an exception that is not gensynth's own becomes a ContractError naming the part and
    its plugin in one line (the original stays chained: ``GENSYNTH_TRACEBACK=1`` shows it in the CLI)."""
    try:
        return factory(**kwargs)
    except GensynthError:
        raise
    except Exception as exc:
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise ContractError(f"{part_ref(host, kind, name)} failed to build ({type(exc).__name__}: {detail}) with "
                            f"options {kwargs}: a bug in the plugin or an option it cannot take") from exc


def build_generator(parts: Parts, host: PluginHost | None = None, **overrides: Any) -> Generator:
    """The generator of ``parts``; raises ContractError naming it when the factory returns no Generator."""
    host = host or get_host()
    factory = host.registry("generators").get(parts.generator)
    g = _call_factory(host, "generators", parts.generator, factory,
                      {"num_classes": parts.num_classes, **parts.generator_options, **overrides})
    check_generator_module(g, part_ref(host, "generators", parts.generator), parts.num_classes)
    return g


def build_discriminator(parts: Parts, host: PluginHost | None = None, **overrides: Any) -> Discriminator:
    """The discriminator of ``parts``; raises ContractError naming it when the factory returns no Discriminator
    with a declared output kind, IncompatibleError when the objective cannot score that kind."""
    host = host or get_host()
    factory = host.registry("discriminators").get(parts.discriminator)
    d = _call_factory(host, "discriminators", parts.discriminator, factory,
                      {"num_classes": parts.num_classes, **parts.discriminator_options, **overrides})
    check_discriminator_module(d, part_ref(host, "discriminators", parts.discriminator), parts.num_classes)
    o_cls = host.registry("objectives").get(parts.objective)
    if d.output_kind not in o_cls.accepts:
        try:
            check_objective_accepts(o_cls, d.output_kind, part_ref(host, "objectives", parts.objective),
                                    part_ref(host, "discriminators", parts.discriminator))
        except ContractError as exc:
            raise IncompatibleError(f"{exc} (choose an objective with --objective NAME)") from None
    return d


def build_objective(parts: Parts, host: PluginHost | None = None) -> Objective:
    host = host or get_host()
    cls = host.registry("objectives").get(parts.objective)
    return cls(dontcare=parts.dontcare_index, **parts.objective_options)


def build_terms(parts: Parts, host: PluginHost | None = None) -> list[LossTerm]:
    host = host or get_host()
    reg = host.registry("losses")
    terms = []
    for name, weight in parts.losses.items():
        term = reg.get(name)(weight=weight, **parts.loss_options.get(name, {}))
        term.name = name
        terms.append(term)
    return terms


def build_method(parts: Parts, host: PluginHost | None = None) -> TrainingMethod:
    from gensynth.method import METHODS

    objective, terms = build_objective(parts, host), build_terms(parts, host)
    if parts.preset.method_factory is not None:
        return parts.preset.method_factory(objective, terms)
    try:
        return METHODS[parts.preset.method](objective, terms)
    except KeyError:
        raise ConfigError(f"preset {parts.preset.name!r} names unknown training method {parts.preset.method!r}; "
                          f"known: {', '.join(METHODS)}") from None


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def canonical_options(cfg: RunConfig, host: PluginHost | None = None) -> RunConfig:
    """``cfg`` with each ``model.<part>_options`` reduced to the options that apply to the part in use (its
    namespace over the flat keys): two configurations that give every part the same options compare equal however
    they were written (resumption compares configurations). Unknown presets leave ``cfg`` as it is."""
    host = host or get_host()
    m = cfg.model
    try:
        preset = host.registry("models").get(m.preset)
    except Exception:
        return cfg
    update = {}
    for part, reg in (("generator", "generators"), ("discriminator", "discriminators"), ("objective", "objectives")):
        name = getattr(m, part) or getattr(preset, part).name
        update[f"{part}_options"] = part_options(getattr(m, f"{part}_options"), name, host.registry(reg))
    return cfg.model_copy(update={"model": m.model_copy(update=update)})


def parts_summary(parts: Parts) -> dict[str, Any]:
    """The resolved parts as saved in a run's config.json (``parts``): names, validated options, the objective and
    loss terms actually used, and the notes of resolving them."""
    return {"generator": parts.generator, "generator_options": parts.generator_options,
            "discriminator": parts.discriminator, "discriminator_options": parts.discriminator_options,
            "objective": parts.objective, "objective_options": parts.objective_options,
            "losses": dict(parts.losses), "loss_options": {k: parts.loss_options.get(k, {}) for k in parts.losses},
            "notes": list(parts.notes)}


def run_notes(parts: Parts, provenance: dict[str, str], host: PluginHost | None = None,
              exclude: tuple[str, ...] = ()) -> list[str]:
    """What resolving a run changed (objective switched, preset terms dropped) and deprecated keys it used: the
    notes ``train`` and ``compare`` print before training (``exclude``: keys the command's own flags set)."""
    from gensynth.options import deprecation_notes

    return [*parts.notes, *deprecation_notes(provenance, host or get_host(), exclude)]
