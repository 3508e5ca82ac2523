"""The contracts every part must keep, checked with messages that name the part.

Each ``check_*`` function raises :class:`ContractError` naming the part (its kind, registry name and plugin), the
expectation and what was returned. They are used three ways:

* at build time (:func:`check_generator_module`, :func:`check_discriminator_module`, :func:`check_objective_accepts`);
* at the first training step (:class:`FirstStepContracts`, hooked into the trainer: the generator's and
  discriminator's calls and the losses of that step are checked once; later steps pay nothing);
* by ``gensynth plugins check`` and :mod:`gensynth.testing`, on tiny instances.

The checks that read values (image range, finiteness) synchronise with the device, which is why the trainer runs
them on the first step only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from gensynth.errors import GensynthError
from gensynth.interfaces import (Condition, Discriminator, DiscriminatorOutput, DOutputKind, Generator,
                                 GeneratorOutput)

#: how far outside [-1, 1] a generated image may stray (rounding of tanh in reduced precision)
IMAGE_RANGE_TOLERANCE = 1e-2


class ContractError(GensynthError, ValueError):
    """A part broke its interface's contract; the message names the part, the expectation and what it returned."""


@dataclass(frozen=True)
class PartRef:
    """Which part is checked: its kind ("discriminator"), registry name and the plugin that registered it."""

    kind: str
    name: str
    plugin: str | None = None

    def __str__(self) -> str:
        who = f"{self.kind} {self.name!r}"
        return f"{who} (plugin {self.plugin!r})" if self.plugin else who


def part_ref(host, registry_kind: str, name: str) -> PartRef:
    """The :class:`PartRef` of ``name`` in the registry ``registry_kind`` ("discriminators") of ``host``."""
    reg = host.registry(registry_kind)
    plugin = reg.entry(name).plugin if name in reg else None
    return PartRef(reg.kind, name, plugin)


def _fail(part: PartRef | str, expected: str, got: str) -> ContractError:
    return ContractError(f"{part}: expected {expected}; got {got}")


def describe(value: Any) -> str:
    """A short description of what a part returned: type and shape(s), never the values."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} ({str(value.dtype).replace('torch.', '')})"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(tuple(v.shape).__repr__() if isinstance(v, Tensor) else type(v).__name__ for v in value[:6])
        more = ", ..." if len(value) > 6 else ""
        return f"a {type(value).__name__} of {len(value)} [{inner}{more}]"
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------------------------
# generators
# --------------------------------------------------------------------------------------------
def check_generator_module(g: Any, part: PartRef | str, num_classes: int | None = None) -> None:
    """What a generator factory built: a :class:`Generator` with a valid ``noise`` kind (and ``num_classes``)."""
    if not isinstance(g, Generator):
        raise _fail(part, "the factory to return a gensynth.interfaces.Generator (an nn.Module)", describe(g))
    if num_classes is not None and getattr(g, "num_classes", num_classes) != num_classes:
        raise _fail(part, f"a generator built for num_classes={num_classes}", f"num_classes={g.num_classes}")


def check_generator_output(out: Any, cond: Condition, part: PartRef | str, *, values: bool = True) -> None:
    """A generator's output: GeneratorOutput with image (B, 3, H, W) at the labels' B, H, W, floating;
    with ``values``, finite and within [-1, 1] (reads the values: a device synchronisation)."""
    if not isinstance(out, GeneratorOutput):
        raise _fail(part, "forward to return a GeneratorOutput(image=(B, 3, H, W), aux={...})", describe(out))
    img = out.image
    b, _, h, w = cond.labels.shape
    if not isinstance(img, Tensor):
        raise _fail(part, f"GeneratorOutput.image to be a tensor (B, 3, H, W) = ({b}, 3, {h}, {w})", describe(img))
    if tuple(img.shape) != (b, 3, h, w):
        raise _fail(part, f"GeneratorOutput.image of shape (B, 3, H, W) = ({b}, 3, {h}, {w}) for labels of shape "
                          f"{tuple(cond.labels.shape)}", describe(img))
    if not img.dtype.is_floating_point:
        raise _fail(part, "a floating-point image in [-1, 1]", describe(img))
    if not isinstance(out.aux, Mapping) or not all(isinstance(v, Tensor) for v in out.aux.values()):
        raise _fail(part, "GeneratorOutput.aux to be a dict of tensors (e.g. mu, logvar (B, z_dim))",
                    describe(out.aux) if not isinstance(out.aux, Mapping)
                    else f"aux {{{', '.join(f'{k!r}: {describe(v)}' for k, v in out.aux.items())}}}")
    if values:
        lo, hi, finite = _range(img)
        if not finite:
            raise _fail(part, "a finite image in [-1, 1]", "NaN or inf values")
        if lo < -1 - IMAGE_RANGE_TOLERANCE or hi > 1 + IMAGE_RANGE_TOLERANCE:
            raise _fail(part, "image values in [-1, 1] (e.g. a tanh output)", f"values in [{lo:.4g}, {hi:.4g}]")


def _range(t: Tensor) -> tuple[float, float, bool]:
    t = t.detach().float()
    stats = torch.stack([t.min(), t.max(), torch.isfinite(t).all().float()]).cpu().tolist()
    return stats[0], stats[1], stats[2] > 0


# --------------------------------------------------------------------------------------------
# discriminators
# --------------------------------------------------------------------------------------------
_LAYOUTS = {
    DOutputKind.PIXEL_CLASSES: "logits (B, N+1, H, W) at the image's size (channel 0 = fake, c+1 = class c)",
    DOutputKind.PIXEL_BINARY: "logits (B, 1, H, W) at the image's size",
    DOutputKind.PATCH: "logits as a list over scales of (B, 1, h, w) tensors",
    DOutputKind.IMAGE: "logits (B, 1), one per image",
}


def check_discriminator_module(d: Any, part: PartRef | str, num_classes: int | None = None) -> None:
    """What a discriminator factory built: a :class:`Discriminator` declaring a :class:`DOutputKind`."""
    if not isinstance(d, Discriminator):
        raise _fail(part, "the factory to return a gensynth.interfaces.Discriminator (an nn.Module)", describe(d))
    kind = getattr(d, "output_kind", None)
    if not isinstance(kind, DOutputKind):
        raise _fail(part, "the class attribute output_kind to be a gensynth.interfaces.DOutputKind", repr(kind))
    if num_classes is not None and getattr(d, "num_classes", num_classes) != num_classes:
        raise _fail(part, f"a discriminator built for num_classes={num_classes}", f"num_classes={d.num_classes}")


def check_discriminator_output(out: Any, image: Tensor, part: PartRef | str, *, declared: DOutputKind,
                               num_classes: int, provides_features: bool = False) -> None:
    """A discriminator's output for ``image`` (B, 3, H, W) against its declared kind.

    Checks: a DiscriminatorOutput whose ``kind`` is the declared one; the logits' layout, channel count, batch and
    spatial size for that kind (PIXEL_*: the image's H, W; PATCH: a non-empty list of (B, 1, h, w) with h <= H,
    w <= W; IMAGE: (B, 1)); features, when present or declared (``provides_features``): a list over scales
    (as many as the PATCH scales) of lists of tensors with batch B."""
    b, h, w = image.shape[0], image.shape[-2], image.shape[-1]
    if not isinstance(out, DiscriminatorOutput):
        raise _fail(part, f"forward to return a DiscriminatorOutput ({declared.name}: {_LAYOUTS[declared]})",
                    describe(out))
    if out.kind != declared:
        kind = out.kind.name if isinstance(out.kind, DOutputKind) else repr(out.kind)
        raise _fail(part, f"DiscriminatorOutput.kind == {declared.name} (its declared output_kind)",
                    f"kind {kind} with {describe(out.logits)}")
    logits = out.logits
    layout = f"{declared.name} {_LAYOUTS[declared]}"
    if declared == DOutputKind.PATCH:
        if isinstance(logits, Tensor) or not isinstance(logits, (list, tuple)) or not logits:
            raise _fail(part, f"{layout}, even for a single scale ([x])", describe(logits))
        for i, x in enumerate(logits):
            if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] != b or x.shape[1] != 1:
                raise _fail(part, f"{layout}: scale {i} of shape ({b}, 1, h, w) for a batch of {b}", describe(x))
            if not (1 <= x.shape[2] <= h and 1 <= x.shape[3] <= w):
                raise _fail(part, f"{layout}: scale {i} no larger than the image ({h}x{w})", describe(x))
    else:
        if not isinstance(logits, Tensor):
            raise _fail(part, f"{layout} as one tensor", describe(logits))
        if declared == DOutputKind.IMAGE:
            want = (b, 1)
        elif declared == DOutputKind.PIXEL_BINARY:
            want = (b, 1, h, w)
        else:
            want = (b, num_classes + 1, h, w)
        if tuple(logits.shape) != want:
            hint = f" for {num_classes} classes" if declared == DOutputKind.PIXEL_CLASSES else ""
            raise _fail(part, f"{layout}: shape {want}{hint} for an image batch of shape {tuple(image.shape)}",
                        describe(logits))
    if not (logits[0] if isinstance(logits, (list, tuple)) else logits).dtype.is_floating_point:
        raise _fail(part, "floating-point logits", describe(logits))
    _check_features(out, b, part, declared, provides_features)


def _check_features(out: DiscriminatorOutput, b: int, part, declared: DOutputKind, provides: bool) -> None:
    feats = out.features
    if feats is None:
        if provides:
            raise _fail(part, "DiscriminatorOutput.features (it declares provides_features=True): a list over "
                              "scales of lists of (B, C, h, w) feature maps", "features=None")
        return
    if not isinstance(feats, (list, tuple)) or not feats or not all(isinstance(s, (list, tuple)) for s in feats):
        raise _fail(part, "DiscriminatorOutput.features as a list over scales of lists of feature tensors "
                          "([[f1, f2, ...], ...], one inner list even for a single scale)", describe(feats))
    if declared == DOutputKind.PATCH and len(feats) != len(out.logits):
        raise _fail(part, f"features for each of the {len(out.logits)} logit scales", f"{len(feats)} feature scales")
    for i, scale in enumerate(feats):
        for j, f in enumerate(scale):
            if not isinstance(f, Tensor) or f.dim() < 2 or f.shape[0] != b:
                raise _fail(part, f"feature {j} of scale {i} to be a tensor with batch {b}", describe(f))


# --------------------------------------------------------------------------------------------
# objectives and loss terms
# --------------------------------------------------------------------------------------------
def check_objective_accepts(objective: Any, kind: DOutputKind, part: PartRef | str,
                            discriminator: PartRef | str = "the discriminator") -> None:
    """The objective (class or instance) declares that it can score ``kind``."""
    accepts = getattr(objective, "accepts", None)
    if not isinstance(accepts, (set, frozenset)) or not all(isinstance(k, DOutputKind) for k in accepts):
        raise _fail(part, "the class attribute accepts to be a frozenset of DOutputKind", repr(accepts))
    if kind not in accepts:
        raise _fail(part, f"to accept the {kind.name} output of {discriminator}",
                    f"accepts {sorted(k.name for k in accepts)}")


def check_loss_value(value: Any, part: PartRef | str, *, what: str = "the loss", values: bool = True) -> None:
    """A loss: a floating scalar tensor of shape () (a (1,) tensor is refused too: the trainer's running sums are
    scalars); with ``values``, finite (a device synchronisation)."""
    if not isinstance(value, Tensor):
        raise _fail(part, f"{what} to be a scalar tensor", describe(value))
    if value.dim() != 0:
        how = ".reshape(())" if value.numel() == 1 else ".mean() or .sum()"
        raise _fail(part, f"{what} to be a scalar tensor of shape () (reduce it: {how})", describe(value))
    if not value.dtype.is_floating_point:
        raise _fail(part, f"{what} to be a floating-point scalar", describe(value))
    if values and not bool(torch.isfinite(value.detach()).all()):
        raise _fail(part, f"{what} to be finite", f"{float(value.detach().float().reshape(()))}")


# --------------------------------------------------------------------------------------------
# the first training step
# --------------------------------------------------------------------------------------------
class _Checked:
    """Calls ``module`` and checks what it returns. ``_orig_mod`` lets :func:`gensynth.method.unwrap` reach the
    module's declarations (``joint_real_fake``, ``takes_labels``, ...) through this wrapper; other attributes are
    the module's."""

    def __init__(self, module, check: Callable[..., None]):
        self._orig_mod = module
        self._check = check

    def __call__(self, *args, **kwargs):
        out = self._orig_mod(*args, **kwargs)
        self._check(out, *args, **kwargs)
        return out

    def __getattr__(self, name: str):  # anything else (attributes a term reads) comes from the module
        return getattr(self.__dict__["_orig_mod"] if "_orig_mod" in self.__dict__ else None, name)


@dataclass
class FirstStepContracts:
    """The checks of a run's first step: wrap G and D with :meth:`generator` / :meth:`discriminator`, pass each
    step's losses to :meth:`losses`. ``loss_parts`` maps a loss name of the method ("D_fake", "labelmix") to the
    part that produced it (the objective's for the adversarial losses)."""

    generator_ref: PartRef
    discriminator_ref: PartRef
    objective_ref: PartRef
    num_classes: int
    declared: DOutputKind
    provides_features: bool
    loss_parts: dict[str, PartRef]

    def generator(self, G):
        def check(out, cond, *args, **kwargs):
            from gensynth.interfaces import as_condition

            check_generator_output(out, as_condition(cond), self.generator_ref)
        return _Checked(G, check)

    def discriminator(self, D):
        def check(out, image, *args, **kwargs):
            check_discriminator_output(out, image, self.discriminator_ref, declared=self.declared,
                                       num_classes=self.num_classes, provides_features=self.provides_features)
        return _Checked(D, check)

    def losses(self, losses: Mapping[str, Any]) -> None:
        for name, value in losses.items():
            part = self.loss_parts.get(name, self.objective_ref)
            what = f"loss {name!r}" if part is self.objective_ref else "the term's value"
            check_loss_value(value, part, what=what)


def first_step_contracts(parts, method, discriminator, host=None) -> FirstStepContracts:
    """The :class:`FirstStepContracts` of a run resolved into ``parts`` (:class:`gensynth.build.Parts`), whose
    training method is ``method`` and built discriminator ``discriminator`` (its declarations are checked)."""
    from gensynth.method import unwrap
    from gensynth.plugins import get_host

    host = host or get_host()
    d = unwrap(discriminator)
    terms = {t.name: part_ref(host, "losses", t.name) for t in getattr(method, "terms", [])}
    return FirstStepContracts(
        generator_ref=part_ref(host, "generators", parts.generator),
        discriminator_ref=part_ref(host, "discriminators", parts.discriminator),
        objective_ref=part_ref(host, "objectives", parts.objective), num_classes=parts.num_classes,
        declared=d.output_kind, provides_features=bool(getattr(d, "provides_features", False)), loss_parts=terms)
