"""Check a plugin's parts the way training uses them: ``gensynth plugins check`` and plugin authors' own tests.

Every registered part is built at a tiny size (the ``tiny=`` options it registered, else its defaults), run on a
generated batch, checked against its interface's contracts (:mod:`gensynth.contracts`) and, where it trains,
differentiated. In a plugin's tests::

    import my_plugin
    from gensynth.testing import assert_plugin_ok

    def test_my_plugin_keeps_the_contracts():
        assert_plugin_ok(my_plugin)   # registered through pluggy, nothing installed

or one part: ``check_part("discriminators", "mine", host=plugin_host(my_plugin))``. The probes and generated
batches live in :mod:`gensynth.probes`, a dataset's contract in :mod:`gensynth.data.contracts`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from gensynth.contracts import (ContractError, FirstStepContracts, PartRef, check_discriminator_module,
                                check_discriminator_output, check_generator_module, check_generator_output,
                                check_loss_value, check_objective_accepts, describe)
from gensynth.data.contracts import check_dataset_spec, check_raw_samples
from gensynth.interfaces import Capability, DOutputKind
from gensynth.probes import (ProbeDiscriminator, ProbeGenerator, ProbeObjective, ProbeSettings, grads_reached,
                             make_batch, probe_kind)

__all__ = ["CHECKED_KINDS", "CheckResult", "PluginCheckFailed", "ProbeDiscriminator", "ProbeGenerator",
           "ProbeObjective", "ProbeSettings", "assert_plugin_ok", "check_dataset_spec", "check_part", "check_plugin",
           "check_raw_samples", "make_batch", "plugin_host"]

#: the registries a plugin check covers, in the order they are reported
CHECKED_KINDS = ("generators", "discriminators", "objectives", "losses", "datasets", "segmenters", "models")


@dataclass
class CheckResult:
    """One check of one part: ``status`` "ok", "FAIL" or "skip"; ``detail`` says what was seen or why."""

    kind: str
    name: str
    plugin: str
    check: str
    status: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


class PluginCheckFailed(AssertionError):
    """Raised by :func:`assert_plugin_ok`; the message lists every failed check."""


# --------------------------------------------------------------------------------------------
# checks per kind
# --------------------------------------------------------------------------------------------
class _Report:
    def __init__(self, kind: str, name: str, plugin: str):
        self.kind, self.name, self.plugin = kind, name, plugin
        self.results: list[CheckResult] = []

    def run(self, check: str, fn: Callable[[], str | None]) -> bool:
        """Run one check; a ContractError (or any exception) is a failure whose message is kept."""
        try:
            detail = fn() or ""
        except _Skip as skip:
            self.results.append(CheckResult(self.kind, self.name, self.plugin, check, "skip", str(skip)))
            return False
        except Exception as exc:  # noqa: BLE001 - every failure of a third-party part is reported, not raised
            msg = str(exc) if isinstance(exc, ContractError) else f"{type(exc).__name__}: {exc}"
            self.results.append(CheckResult(self.kind, self.name, self.plugin, check, "FAIL", msg))
            return False
        self.results.append(CheckResult(self.kind, self.name, self.plugin, check, "ok", detail))
        return True


class _Skip(Exception):
    pass



def _backward_reaches(loss: Tensor, module, ref, source: str) -> str:
    """Backward of ``loss``; raises unless finite gradients reach some of ``module``'s parameters."""
    loss.backward()
    got, total, finite = grads_reached(module.parameters())
    if not finite:
        raise ContractError(f"{ref}: expected finite gradients; got NaN or inf")
    if total and not got:
        raise ContractError(f"{ref}: expected gradients to reach its parameters from {source}; got none of {total}")
    return f"gradients reach {got}/{total} parameter tensors"

def _tiny(entry) -> dict[str, Any]:
    return dict(entry.extra.get("tiny") or {})


def _settings(entry, base: ProbeSettings) -> ProbeSettings:
    size = entry.extra.get("tiny_size")
    return ProbeSettings(base.batch, tuple(size) if size else base.size, base.num_classes, base.seed)


def _check_generator(entry, ref: PartRef, rep: _Report, s: ProbeSettings) -> None:
    from gensynth.options import validate_part_options

    state: dict[str, Any] = {}

    def build():
        opts = validate_part_options(entry, _tiny(entry), "generator", "tiny options")
        g = entry.obj(num_classes=s.num_classes, **opts)
        check_generator_module(g, ref, s.num_classes)
        state["g"] = g
        given = ", ".join(f"{k}={v}" for k, v in _tiny(entry).items()) or "default options"
        return f"{sum(p.numel() for p in g.parameters())} parameters ({given})"

    def forward():
        g = state["g"].train()
        real, cond = make_batch(s, edges=getattr(g, "uses_instance_edges", False),
                                style=getattr(g, "uses_style_image", False))
        out = g(cond)
        check_generator_output(out, cond, ref)
        state["out"] = out
        return f"image {tuple(out.image.shape)}" + (f", aux {sorted(out.aux)}" if out.aux else "")

    def backward():
        out = state["out"]
        loss = out.image.float().mean() + sum(v.float().mean() for v in out.aux.values() if isinstance(v, Tensor))
        return _backward_reaches(loss, state["g"], ref, "the image (is the output detached?)")

    rep.run("build", build) and rep.run("forward", forward) and rep.run("backward", backward)


def _check_discriminator(entry, ref: PartRef, rep: _Report, s: ProbeSettings, host) -> None:
    from gensynth.build import discriminator_class
    from gensynth.contracts import part_ref
    from gensynth.options import validate_part_options

    state: dict[str, Any] = {}

    def build():
        opts = validate_part_options(entry, _tiny(entry), "discriminator", "tiny options")
        d = entry.obj(num_classes=s.num_classes, **opts)
        check_discriminator_module(d, ref, s.num_classes)
        declared = discriminator_class(entry)
        if declared is not None and declared.output_kind != d.output_kind:
            raise ContractError(f"{ref}: expected the built module's output_kind to be the registered class's "
                                f"({declared.output_kind.name}); got {d.output_kind.name}")
        state["d"] = d
        return f"{d.output_kind.name}, {sum(p.numel() for p in d.parameters())} parameters"

    def forward():
        d = state["d"].train()
        real, cond = make_batch(s, edges=True)
        outs = []
        for n in (s.batch, s.batch + 1):  # two batch sizes: an output that ignores the batch is caught
            image = torch.cat([real] * 2)[:n]
            c = cond[torch.arange(n) % s.batch]
            out = d(image, c)  # as the training method calls it
            check_discriminator_output(out, image, ref, declared=d.output_kind, num_classes=s.num_classes,
                                       provides_features=d.provides_features)
            outs.append(out)
        if not d.takes_labels:  # the method may call it without the Condition (merged D-step calls)
            try:
                out = d(real, None)
            except Exception as exc:
                raise ContractError(f"{ref}: expected forward(image, None) to work: it declares takes_labels=False, "
                                    f"so the method may call it without the Condition; got {type(exc).__name__}: "
                                    f"{exc}") from None
            check_discriminator_output(out, real, ref, declared=d.output_kind, num_classes=s.num_classes,
                                       provides_features=d.provides_features)
        state["out"], state["cond"] = outs[0], cond
        return describe(outs[0].logits) + (", features" if outs[0].features is not None else "")

    def objective():
        name = entry.extra.get("default_objective")
        o_reg = host.registry("objectives")
        kind = state["d"].output_kind
        if name:
            o_ref = part_ref(host, "objectives", name)
            check_objective_accepts(o_reg.get(name), kind, o_ref, ref)
            objective = o_reg.get(name)(dontcare=0)
            out, cond = state["out"], state["cond"]
            for what, value in (("d_loss(real)", objective.d_loss(out, cond, "real")),
                                ("g_loss", objective.g_loss(out, cond))):
                check_loss_value(value, o_ref, what=f"{what} on the output of {ref}")
            return f"default_objective {name!r} accepts {kind.name} and scores it"
        fitting = [n for n in o_reg.names() if kind in getattr(o_reg.get(n), "accepts", ())]
        if not fitting:
            raise _Skip(f"no registered objective accepts {kind.name}; declare default_objective= when registering")
        return f"objectives that accept {kind.name}: {', '.join(fitting)}"

    def backward():
        out = state["out"]
        scales = out.logits if isinstance(out.logits, (list, tuple)) else [out.logits]
        loss = sum(x.float().mean() for x in scales)
        for scale in out.features or []:
            loss = loss + sum(f.float().mean() for f in scale)
        return _backward_reaches(loss, state["d"], ref, "the logits")

    if rep.run("build", build) and rep.run("forward", forward):
        rep.run("objective", objective)
        rep.run("backward", backward)


def _check_objective(entry, ref: PartRef, rep: _Report, s: ProbeSettings) -> None:
    from gensynth.options import validate_part_options

    cls = entry.obj
    accepts = getattr(cls, "accepts", None)

    def declared():
        if not isinstance(accepts, (set, frozenset)) or not accepts or not all(isinstance(k, DOutputKind)
                                                                              for k in accepts):
            raise ContractError(f"{ref}: expected the class attribute accepts to be a non-empty frozenset of "
                                f"DOutputKind; got {accepts!r}")
        return ", ".join(sorted(k.name for k in accepts))

    if not rep.run("declares accepts", declared):
        return
    for kind in sorted(accepts, key=lambda k: k.name):
        def run(kind=kind):
            opts = validate_part_options(entry, _tiny(entry), "objective", "tiny options")
            objective = cls(dontcare=0, **opts)
            d = ProbeDiscriminator(kind, s.num_classes)
            real, cond = make_batch(s)
            for what, fn in (("d_loss(real)", lambda o: objective.d_loss(o, cond, "real")),
                             ("d_loss(fake)", lambda o: objective.d_loss(o, cond, "fake")),
                             ("g_loss", lambda o: objective.g_loss(o, cond))):
                d.zero_grad()
                value = fn(d(real, cond))
                check_loss_value(value, ref, what=f"{what} on {kind.name} output")
                value.backward()
                got, total, finite = grads_reached(d.parameters())
                if not got or not finite:
                    raise ContractError(f"{ref}: expected {what} to give finite gradients to the discriminator; got "
                                        f"{'none' if not got else 'NaN or inf'}")
            return "d_loss(real), d_loss(fake), g_loss: finite scalars with gradients"
        rep.run(f"scores {kind.name}", run)


def _check_loss(entry, ref: PartRef, rep: _Report, s: ProbeSettings) -> None:
    from gensynth.method import AdversarialMethod
    from gensynth.options import validate_part_options

    cls = entry.obj
    state: dict[str, Any] = {}

    def build():
        if getattr(cls, "side", None) not in ("D", "G"):
            raise ContractError(f"{ref}: expected the class attribute side = 'D' or 'G'; got "
                                f"{getattr(cls, 'side', None)!r}")
        bad = [c for c in getattr(cls, "requires", ()) if not isinstance(c, Capability)]
        if bad:
            raise ContractError(f"{ref}: expected requires to hold gensynth.interfaces.Capability values; got {bad!r}")
        opts = validate_part_options(entry, _tiny(entry), "loss", "tiny options")
        term = cls(**opts)
        term.name = entry.name
        state["term"] = term
        return f"side {cls.side}, weight {term.weight:g}, requires {sorted(c.name for c in cls.requires) or '-'}"

    def step():
        term = state["term"]
        kind = probe_kind(term.requires)
        d = ProbeDiscriminator(kind, s.num_classes, provides_features=True)
        g = ProbeGenerator(s.num_classes, with_aux=Capability.GENERATOR_AUX in term.requires)
        method = AdversarialMethod(ProbeObjective(), [term], merge_d_calls=False)
        checks = FirstStepContracts(PartRef("generator", "probe"), PartRef("discriminator", f"probe {kind.name}"),
                                    PartRef("objective", "probe"), s.num_classes, kind, True, {term.name: ref})
        real, cond = make_batch(s)
        fn = method.d_losses if term.side == "D" else method.g_losses
        params = list(d.parameters()) if term.side == "D" else list(g.parameters())
        losses = fn(checks.generator(g), checks.discriminator(d), real, cond)
        if term.name not in losses:
            raise ContractError(f"{ref}: expected the training method to compute it; it did not")
        value = losses[term.name]
        check_loss_value(value, ref, what="the term's value")
        if not value.requires_grad:
            trained = "discriminator" if term.side == "D" else "generator"
            raise ContractError(f"{ref}: expected a value that depends on the {trained} (requires_grad); got a "
                                f"constant {float(value.detach()):.4g}")
        value.backward()
        got, total, finite = grads_reached(params)
        if not finite:
            raise ContractError(f"{ref}: expected finite gradients; got NaN or inf")
        return (f"{term.side} step with a {kind.name} discriminator: {float(value.detach()):.4g}, gradients reach "
                f"{got}/{total} {'D' if term.side == 'D' else 'G'} parameter tensors")

    rep.run("build", build) and rep.run("step", step)


def _check_dataset(entry, ref: PartRef, rep: _Report, data_root: str | None) -> None:
    spec = entry.obj
    root = data_root or (spec.example_root() if hasattr(spec, "example_root") else None)
    if hasattr(spec, "for_root"):  # classes read from the data (folder)
        if root is None:
            rep.run("spec", lambda: _skip("its classes come from data.root: pass --data-root"))
            return
        spec = spec.for_root(root)
    if not rep.run("spec", lambda: check_dataset_spec(spec, ref)):
        return
    if root is None and not getattr(spec, "procedural", False):
        rep.run("samples", lambda: _skip("no data: pass --data-root, or ship a small copy and return it from "
                                         "example_root()"))
        return
    rep.run("samples", lambda: check_raw_samples(spec, root, spec.splits[0], ref))


def _skip(why: str):
    raise _Skip(why)


def _check_segmenter(entry, ref: PartRef, rep: _Report, s: ProbeSettings) -> None:
    from gensynth.options import validate_part_options

    state: dict[str, Any] = {}

    def build():
        tiny = entry.extra.get("tiny")
        try:
            opts = validate_part_options(entry, tiny or {}, "segmenter", "tiny options")
            seg = entry.obj(num_classes=s.num_classes, checkpoint=None, device="cpu", **opts)
        except Exception as exc:
            if tiny is None:
                raise _Skip(f"cannot be built without options ({type(exc).__name__}: {exc}); register tiny=") from None
            raise
        if not isinstance(seg, nn.Module):
            raise ContractError(f"{ref}: expected the factory to return a gensynth.interfaces.Segmenter (an "
                                f"nn.Module); got {describe(seg)}")
        state["seg"] = seg.eval()
        return type(seg).__name__

    def forward():
        real, _ = make_batch(s)
        with torch.no_grad():
            out = state["seg"](real)
        b, h, w = real.shape[0], real.shape[2], real.shape[3]
        space = getattr(state["seg"], "output_space", "model")
        if not isinstance(out, Tensor) or out.dim() != 4 or out.shape[0] != b or tuple(out.shape[2:]) != (h, w) \
                or (space == "model" and out.shape[1] != s.num_classes):
            want = f"({b}, {s.num_classes if space == 'model' else 'C'}, {h}, {w})"
            raise ContractError(f"{ref}: expected logits of shape {want} for images {tuple(real.shape)}; got "
                                f"{describe(out)}")
        return f"logits {tuple(out.shape)}"

    rep.run("build", build) and rep.run("forward", forward)


def _check_model(entry, ref: PartRef, rep: _Report, host) -> None:
    def run():
        from gensynth.build import check_compatibility, resolve_parts
        from gensynth.config import resolve

        datasets = host.registry("datasets").names()
        if not datasets:
            raise _Skip("no dataset registered to resolve the preset with")
        data = "demo" if "demo" in datasets else datasets[0]
        cfg, _ = resolve({"model.preset": entry.name, "data.name": data}, host=host)
        parts = resolve_parts(cfg, host)
        check_compatibility(parts, host)
        return f"{parts.generator} + {parts.discriminator}, objective {parts.objective}, losses {parts.losses or '-'}"

    rep.run("resolves", run)


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------
def plugin_host(*plugins: Any, load_entry_points: bool = True):
    """A fresh :class:`gensynth.plugins.PluginHost` with ``plugins`` (modules or objects with hook implementations)
    registered through pluggy under their module names. Installed plugins load too unless ``load_entry_points``
    is False; a plugin already installed is not registered twice."""
    from gensynth.plugins import PluginHost

    host = PluginHost(load_entry_points=load_entry_points)
    for p in plugins:
        if not host.pm.is_registered(p):
            host.register_plugin(p, name=getattr(p, "__name__", type(p).__name__))
    return host


def plugin_name(plugin: Any, host) -> str:
    if isinstance(plugin, str):
        return plugin
    return host.pm.get_name(plugin)


def check_part(kind: str, name: str, host=None, *, settings: ProbeSettings | None = None,
               data_root: str | None = None) -> list[CheckResult]:
    """Check one registered part; ``kind`` is a registry ("discriminators"). Returns every check's result."""
    from gensynth.contracts import part_ref
    from gensynth.plugins import get_host

    host = host or get_host()
    entry = host.registry(kind).entry(name)
    ref = part_ref(host, kind, name)
    rep = _Report(host.registry(kind).kind, name, entry.plugin)
    s = _settings(entry, settings or ProbeSettings())
    if kind not in CHECKED_KINDS:
        raise ValueError(f"unknown registry {kind!r}; one of {', '.join(CHECKED_KINDS)}")
    with torch.random.fork_rng(devices=[]):  # the caller's random streams stay as they were
        torch.manual_seed(s.seed)
        _check(kind, entry, ref, rep, s, host, data_root)
    return rep.results


def _check(kind: str, entry, ref: PartRef, rep: _Report, s: ProbeSettings, host, data_root: str | None) -> None:
    if kind == "generators":
        _check_generator(entry, ref, rep, s)
    elif kind == "discriminators":
        _check_discriminator(entry, ref, rep, s, host)
    elif kind == "objectives":
        _check_objective(entry, ref, rep, s)
    elif kind == "losses":
        _check_loss(entry, ref, rep, s)
    elif kind == "datasets":
        _check_dataset(entry, ref, rep, data_root)
    elif kind == "segmenters":
        _check_segmenter(entry, ref, rep, s)
    elif kind == "models":
        _check_model(entry, ref, rep, host)


def check_plugin(plugin: Any = None, host=None, *, settings: ProbeSettings | None = None,
                 data_root: str | None = None) -> list[CheckResult]:
    """Check every part ``plugin`` registers (a plugin name, or a module/object with hook implementations, which is
    registered into a fresh host); None checks every plugin's parts."""
    if host is None:
        if isinstance(plugin, (str, type(None))):
            from gensynth.plugins import get_host

            host = get_host()
        else:
            host = plugin_host(plugin)
    name = None if plugin is None else plugin_name(plugin, host)
    if name is not None and name not in dict(host.pm.list_name_plugin()):
        from gensynth.errors import RegistryError, suggest

        known = [n for n, _ in host.pm.list_name_plugin()]
        raise RegistryError(f"no plugin named {name!r}.{suggest(name, known)} Loaded: {', '.join(sorted(known))}")
    results: list[CheckResult] = []
    for kind in CHECKED_KINDS:
        reg = host.registry(kind)
        names = reg.names() if name is None else reg.by_plugin(name)
        for part in names:
            results += check_part(kind, part, host, settings=settings, data_root=data_root)
    return results


def assert_plugin_ok(plugin: Any = None, host=None, **kwargs: Any) -> list[CheckResult]:
    """:func:`check_plugin`, raising :class:`PluginCheckFailed` listing every failed check (skips are allowed)."""
    results = check_plugin(plugin, host, **kwargs)
    failed = [r for r in results if r.failed]
    if failed:
        raise PluginCheckFailed("\n".join(f"{r.kind} {r.name!r} ({r.plugin}) {r.check}: {r.detail}" for r in failed))
    if not results:
        raise PluginCheckFailed(f"plugin {plugin!r} registered no parts to check")
    return results
