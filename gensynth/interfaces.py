"""The abstract interfaces every plugin implements.

Tensor conventions (everywhere in gensynth):

* ``labels``: (B, N, H, W) float one-hot over the model's N semantic classes (don't-care included
  where the model keeps it as a class, e.g. OASIS class 0).
* ``label_ids``: (B, H, W) int64 class indices in [0, N).
* ``image``: (B, 3, H, W) float in [-1, 1].
* ``instance_edges``: (B, 1, H, W) float in {0, 1}.
"""
from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Sequence

import torch
from torch import Tensor, nn


# --------------------------------------------------------------------------------------------
# Conditioning input
# --------------------------------------------------------------------------------------------
@dataclass
class Condition:
    """What a generator is conditioned on.

    labels: (B, N, H, W) one-hot float.
    instance_edges: (B, 1, H, W) in {0, 1}, or None when the dataset has no instance maps.
    style_image: (B, 3, H, W) in [-1, 1] for style-guided generators (SPADE's VAE encoder), or None.
    ids: (B, H, W) int64 with ``labels == one_hot(ids)``, or None. Set by whoever builds the one-hot labels
    from ids (the data loader, the generate API); generators use it to skip multiplications by the zeros of
    the one-hot map (:mod:`gensynth.nn.label_conv`). Leave it None when labels are not exactly one-hot.
    """

    labels: Tensor
    instance_edges: Tensor | None = None
    style_image: Tensor | None = None
    ids: Tensor | None = None

    @property
    def label_ids(self) -> Tensor:
        """(B, H, W) int64 argmax of the one-hot labels (``ids`` when known)."""
        return self.ids if self.ids is not None else self.labels.argmax(dim=1)

    @property
    def num_classes(self) -> int:
        return self.labels.shape[1]

    def _map(self, fn) -> "Condition":
        def f(t):
            return None if t is None else fn(t)

        return Condition(f(self.labels), f(self.instance_edges), f(self.style_image), f(self.ids))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Condition":
        """On ``device``; floating tensors cast to ``dtype`` when given (ids stay int64)."""
        def move(t):
            cast = dtype if dtype is not None and t.dtype.is_floating_point else t.dtype
            return t.to(device=device, dtype=cast, non_blocking=True)

        return self._map(move)

    def to_memory_format(self, memory_format: torch.memory_format) -> "Condition":
        """The same condition with its 4D tensors laid out as ``memory_format`` (e.g. channels-last)."""
        return self._map(lambda t: t.contiguous(memory_format=memory_format) if t.dim() == 4 else t)

    def __getitem__(self, idx) -> "Condition":
        return self._map(lambda t: t[idx])


def as_condition(cond: Condition | Tensor) -> Condition:
    """Accept a bare one-hot label tensor wherever a Condition is expected."""
    if isinstance(cond, Condition):
        return cond
    if isinstance(cond, Tensor):
        if cond.dim() != 4:
            raise ValueError(f"labels must be (B, N, H, W) one-hot, got shape {tuple(cond.shape)}")
        return Condition(labels=cond)
    raise TypeError(f"expected a Condition or a (B, N, H, W) tensor, got {type(cond).__name__}")


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------
class NoiseKind(str, enum.Enum):
    NONE = "none"  # deterministic given the labels
    VECTOR = "vector"  # z: (B, z_dim); e.g. SPADE's VAE latent
    SPATIAL = "3d"  # z: (B, z_dim) broadcast over pixels, or (B, z_dim, H, W) spatial (OASIS)


@dataclass
class GeneratorOutput:
    """image: (B, 3, H, W) in [-1, 1]; aux: extra outputs (e.g. ``mu``, ``logvar`` of a VAE encoder)."""

    image: Tensor
    aux: dict[str, Tensor] = field(default_factory=dict)


class Generator(nn.Module, abc.ABC):
    """A conditional generator.

    Subclasses set ``noise`` (a :class:`NoiseKind`) and ``z_dim`` and implement ``forward``.
    ``uses_instance_edges`` / ``uses_style_image`` declare optional inputs of the Condition.
    ``param_free_norm`` names the normalisation the trainer may convert ("batch" -> SyncBatchNorm
    on multi-GPU CUDA when ``wants_sync_bn`` is True).
    """

    noise: ClassVar[NoiseKind] = NoiseKind.NONE
    z_dim: int = 0
    num_classes: int
    uses_instance_edges: bool = False
    uses_style_image: bool = False
    wants_sync_bn: bool = False

    @abc.abstractmethod
    def forward(self, cond: Condition | Tensor, z: Tensor | None = None) -> GeneratorOutput:
        """cond: Condition (or (B, N, H, W) one-hot); z: (B, z_dim) or (B, z_dim, H, W) or None (sampled)."""

    def sample_noise(self, batch: int, device: torch.device | str = "cpu",
                     generator: torch.Generator | None = None) -> Tensor | None:
        """(B, z_dim) standard normal noise, or None when the generator takes none."""
        if self.noise == NoiseKind.NONE or self.z_dim == 0:
            return None
        return torch.randn(batch, self.z_dim, device=device, generator=generator)


# --------------------------------------------------------------------------------------------
# Discriminator
# --------------------------------------------------------------------------------------------
class DOutputKind(str, enum.Enum):
    PIXEL_CLASSES = "pixel-n+1"  # logits (B, N+1, H, W): channel 0 = fake, c+1 = class c
    PIXEL_BINARY = "pixel-real-fake"  # logits (B, 1, H, W): real/fake per pixel
    PATCH = "patch"  # list over scales of (B, 1, h, w) logits, with features for feature matching
    IMAGE = "image"  # (B, 1) one real/fake logit per image


@dataclass
class DiscriminatorOutput:
    """What a discriminator returns.

    kind: which :class:`DOutputKind` ``logits`` holds; the discriminator's declared ``output_kind``.
    logits: PIXEL_CLASSES (B, N+1, H, W) and PIXEL_BINARY (B, 1, H, W) at the image's size; IMAGE (B, 1); PATCH a
    list over scales of (B, 1, h, w) (a list even for one scale).
    features: per scale, a list of intermediate (B, C, h, w) feature maps (for feature matching; as many scales as
    PATCH logits), or None. :mod:`gensynth.contracts` checks all of this at the first training step.
    """

    kind: DOutputKind
    logits: Tensor | list[Tensor]
    features: list[list[Tensor]] | None = None

    def split(self, sizes: Sequence[int]) -> list["DiscriminatorOutput"]:
        """Split a joint real/fake batch back into parts along the batch dimension."""

        def cut(t: Tensor) -> tuple[Tensor, ...]:
            return torch.split(t, list(sizes), dim=0)

        if isinstance(self.logits, Tensor):
            parts_logits = list(cut(self.logits))
        else:
            per_scale = [cut(t) for t in self.logits]
            parts_logits = [[s[i] for s in per_scale] for i in range(len(sizes))]
        if self.features is None:
            parts_features = [None] * len(sizes)
        else:
            cut_feats = [[cut(f) for f in scale] for scale in self.features]
            parts_features = [[[f[i] for f in scale] for scale in cut_feats] for i in range(len(sizes))]
        return [DiscriminatorOutput(self.kind, l, f) for l, f in zip(parts_logits, parts_features)]


class Discriminator(nn.Module, abc.ABC):
    """A discriminator.

    ``output_kind`` declares what it produces; ``provides_features`` whether it returns
    intermediate features; ``takes_labels`` whether it reads the Condition (concatenation,
    projection) or only the image (the OASIS U-Net, which learns the classes itself).
    ``joint_real_fake``: real and fake should go through one call (shared normalisation stats).
    ``batch_independent``: in training mode each sample's output depends on that sample alone (no batch
    statistics, no per-call state but :class:`gensynth.nn.spectral.SpectralConv2d`'s power iteration), so the
    method may merge the D step's calls into one (:func:`gensynth.nn.spectral.consecutive_calls`).
    """

    output_kind: ClassVar[DOutputKind]
    provides_features: ClassVar[bool] = False
    takes_labels: ClassVar[bool] = False
    joint_real_fake: ClassVar[bool] = False
    batch_independent: ClassVar[bool] = False
    num_classes: int

    @abc.abstractmethod
    def forward(self, image: Tensor, cond: Condition | None = None) -> DiscriminatorOutput:
        """image: (B, 3, H, W) in [-1, 1]; cond: the Condition (used when ``takes_labels``)."""


# --------------------------------------------------------------------------------------------
# Objectives and loss terms
# --------------------------------------------------------------------------------------------
Target = Literal["real", "fake"]


class Objective(abc.ABC):
    """An adversarial objective, matched to what a discriminator outputs.

    ``accepts``: the discriminator output kinds it can score.
    ``d_loss(out, cond, target)``: the discriminator's loss for real or fake inputs (scalar).
    ``g_loss(out, cond)``: the generator's adversarial loss on D's output for fakes (scalar).
    """

    accepts: ClassVar[frozenset[DOutputKind]]
    name: ClassVar[str] = ""

    def __init__(self, **options: Any):
        self.options = options

    @abc.abstractmethod
    def d_loss(self, out: DiscriminatorOutput, cond: Condition, target: Target) -> Tensor: ...

    @abc.abstractmethod
    def g_loss(self, out: DiscriminatorOutput, cond: Condition) -> Tensor: ...

    def uninformative_loss(self, num_classes: int) -> float | None:
        """The value of ``d_loss(real)`` and ``g_loss`` when D's output carries no information (e.g. equal class
        probabilities everywhere), or None when there is no such level. The health monitor reports a collapsed
        discriminator when both losses stay pinned there (:mod:`gensynth.train.health`)."""
        return None


class Capability(str, enum.Enum):
    """What a loss term needs from the discriminator, generator or data."""

    PIXEL_OUTPUT = "per-pixel discriminator output"
    FEATURES = "discriminator intermediate features"
    GENERATOR_AUX = "generator auxiliary outputs (mu, logvar)"
    STYLE_IMAGE = "a style image encoder in the generator"


@dataclass
class StepContext:
    """Everything a loss term may look at in one D or G step.

    real: (B, 3, H, W); fake: (B, 3, H, W) (detached in the D step); cond: the Condition;
    d_real / d_fake: discriminator outputs on them (d_real is None in a G step unless a term asked);
    gen: the generator output (aux included); discriminator: the D module (LabelMix calls it again);
    generator: the G module (callable ``(cond, z) -> GeneratorOutput``) in a G step, for terms that draw another
    sample (the diversity term), else None.
    d_inputs / d_extra: per term name, the extra images a D-side term asked D to judge (:meth:`LossTerm.d_input`)
    and, when the method judged them together with fake and real, D's outputs on them; scratch: per term name,
    what a term keeps between ``d_input`` and ``__call__`` (LabelMix's mask).
    """

    real: Tensor
    fake: Tensor
    cond: Condition
    discriminator: Callable[..., DiscriminatorOutput]
    d_real: DiscriminatorOutput | None = None
    d_fake: DiscriminatorOutput | None = None
    gen: GeneratorOutput | None = None
    step: int = 0
    generator: Callable[..., GeneratorOutput] | None = None
    d_inputs: dict[str, Any] = field(default_factory=dict)
    d_extra: dict[str, DiscriminatorOutput] = field(default_factory=dict)
    scratch: dict[str, Any] = field(default_factory=dict)  # terms' own per-step data, by term name


class LossTerm(abc.ABC):
    """An extra named, weighted loss term (LabelMix, feature matching, VGG, KL ...).

    ``side`` is "D" or "G"; ``requires`` the capabilities it needs (checked at configuration time);
    ``needs_real_d_output`` asks the G step to run D on real images too (feature matching).
    ``__call__`` returns the *unweighted* term; the method multiplies by ``weight``.
    """

    side: ClassVar[Literal["D", "G"]]
    requires: ClassVar[frozenset[Capability]] = frozenset()
    needs_real_d_output: ClassVar[bool] = False
    name: str = ""  # the registry name, set when the term is built from a configuration
    default_weight: ClassVar[float] = 1.0

    def __init__(self, weight: float | None = None, **options: Any):
        self.weight = self.default_weight if weight is None else float(weight)
        self.options = options

    def to(self, device) -> "LossTerm":  # terms holding networks (VGG) override this
        return self

    def d_input(self, ctx: StepContext) -> Tensor | None:
        """D side: images (B', 3, H, W) this term will have D judge (under ``ctx.cond``), when they can be formed
        from ``ctx.real`` and ``ctx.fake`` before D runs (LabelMix's mix). The method stores them in
        ``ctx.d_inputs[name]`` and may judge them in one call with the fake and real images, leaving the output in
        ``ctx.d_extra[name]``; otherwise ``__call__`` calls D itself. None (default): the term calls D itself."""
        return None

    @abc.abstractmethod
    def __call__(self, ctx: StepContext) -> Tensor: ...


def discriminator_capabilities(d: type[Discriminator] | Discriminator) -> set[Capability]:
    caps = set()
    if d.output_kind in (DOutputKind.PIXEL_CLASSES, DOutputKind.PIXEL_BINARY):
        caps.add(Capability.PIXEL_OUTPUT)
    if d.provides_features:
        caps.add(Capability.FEATURES)
    return caps


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassInfo:
    id: int  # model class index
    name: str
    color: tuple[int, int, int]


@dataclass
class RawSample:
    """One sample as read from an official on-disk layout (before any resizing).

    image_bytes: the original file's bytes, untouched; image_ext: "jpg" or "png".
    label: (H, W) numpy integer array of raw official ids; instance: (H, W) numpy int array or None.
    key: a dot-free unique key; source: the image path relative to the root.
    """

    key: str
    image_bytes: bytes
    image_ext: str
    label: Any
    instance: Any = None
    source: str = ""
    label_source: str = ""


class DatasetSpec(abc.ABC):
    """A dataset: its classes, its raw-id table, its default resolution and its reader.

    ``classes``: model classes (index = position). ``dontcare``: model class index that means
    "unlabelled" (None if every pixel is labelled). ``raw_to_class``: lookup table (length
    ``max_raw_id + 1``) from raw file ids to model classes; ids not in the table are invalid.
    ``eval_ids``: optional table from model classes to evaluation ids (255 = ignored), e.g.
    Cityscapes' 19 trainIds. ``has_instances``: the official layout carries instance maps.
    """

    name: str
    classes: list[ClassInfo]
    dontcare: int | None = 0
    default_size: tuple[int, int] = (256, 256)  # (H, W)
    has_instances: bool = False
    splits: tuple[str, ...] = ("train", "val")
    image_resample: str = "bicubic"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    @abc.abstractmethod
    def raw_to_class(self) -> Any:
        """numpy int64 array: raw id -> model class (-1 = not a valid raw id)."""

    @property
    def eval_ids(self) -> Any | None:
        return None

    @property
    def valid_raw_ids(self) -> set[int]:
        import numpy as np

        return set(int(i) for i in np.nonzero(self.raw_to_class >= 0)[0])

    @abc.abstractmethod
    def iter_raw(self, root: str, split: str) -> "Any":
        """Yield :class:`RawSample` objects from the official layout under ``root``.

        Raises DataError naming the file when a partner file is missing.
        """

    def list_raw(self, root: str, split: str) -> list[Any]:
        """Optional: the list of work items (paths) for parallel conversion; default None."""
        return []

    def default_options(self) -> dict[str, Any]:
        """Config overrides this dataset brings (dotted keys), e.g. {'data.size': [256, 512]}."""
        return {}

    #: which files of a folder are this dataset's label maps (``gensynth generate --labels FOLDER``, the paint
    #: app), e.g. Cityscapes' ``*_gtFine_labelIds.png``; searched in sub-folders when the folder has none itself
    label_file_pattern: str = "*.png"

    def label_colours(self) -> dict[tuple[int, int, int], int]:
        """Colour -> raw id for reading RGB colour masks: each class's colour to the first raw id of that class
        (the first class wins a colour several classes share). Datasets whose colours live elsewhere (a user's
        classes file) override this; an empty dict means colour masks are not accepted."""
        import numpy as np

        table = np.asarray(self.raw_to_class)
        first_raw: dict[int, int] = {}
        for raw, cls in enumerate(table.tolist()):
            if cls >= 0 and cls not in first_raw:
                first_raw[cls] = raw
        out: dict[tuple[int, int, int], int] = {}
        for info in self.classes:
            colour = tuple(int(c) for c in info.color)
            if info.id in first_raw and colour not in out:
                out[colour] = first_raw[info.id]
        return out

    def read_label_file(self, path: str) -> Any:
        """(H, W) int64 raw ids of one label file: an id PNG, or an RGB colour mask in this dataset's class colours
        (:mod:`gensynth.data.label_files`). Training conversion, ``gensynth generate`` and the paint app all read
        label files through this method, so that a file one of them accepts, the others accept too."""
        from gensynth.data.label_files import read_label_png

        return read_label_png(path, self.label_colours(), dataset=f"dataset {self.name!r}")

    def example_root(self) -> str | None:
        """Optional: a directory with a few samples in this dataset's layout shipped with the plugin (e.g. via
        ``importlib.resources``), read by ``gensynth plugins check`` and :mod:`gensynth.testing`. Default None."""
        return None


# --------------------------------------------------------------------------------------------
# Model presets and training methods
# --------------------------------------------------------------------------------------------
@dataclass
class PartSpec:
    """A registry name plus options for it."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelPreset:
    """A named bundle: training method, generator, discriminator, objective, loss terms and defaults.

    ``losses``: loss-term name -> weight (0 disables). ``defaults``: dotted config keys -> values
    (optimiser, EMA, batch size ...). ``dataset_defaults``: dataset name -> dotted overrides that
    the official scripts use for it. ``paper_defaults``: dataset name -> overrides the paper states
    where it differs from the code (selected by ``model.values=paper``).
    ``dontcare``: where the model puts the don't-care pixels: "class" (OASIS: a class of its own,
    weighted 0 in the loss) or "extra-last" (SPADE: an extra last channel).
    ``scales``: model sizes a user picks with ``--scale NAME`` (``model.scale``): name -> dotted overrides of
    widths and batch size, applied over the dataset's values. ``"paper"`` (the published widths: no overrides)
    always exists. ``default_scales``: dataset name -> the scale used when the user names none (e.g.
    ``{"demo": "tiny"}``); other datasets get ``"paper"``.
    """

    name: str
    description: str
    method: str
    generator: PartSpec
    discriminator: PartSpec
    objective: PartSpec
    losses: dict[str, float] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    dataset_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    paper_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    dontcare: Literal["class", "extra-last"] = "class"
    method_factory: Callable[..., "TrainingMethod"] | None = None
    scales: dict[str, dict[str, Any]] = field(default_factory=dict)
    default_scales: dict[str, str] = field(default_factory=dict)

    def scale_names(self) -> list[str]:
        """Every scale of this preset, ``paper`` first."""
        return ["paper"] + sorted(n for n in self.scales if n != "paper")

    def scale_overrides(self, scale: str) -> dict[str, Any]:
        """The dotted overrides of ``scale``; ConfigError naming the preset's scales for an unknown one."""
        if scale == "paper":
            return dict(self.scales.get("paper", {}))
        if scale not in self.scales:
            from gensynth.errors import ConfigError, suggest

            raise ConfigError(f"model preset {self.name!r} has no scale {scale!r}.{suggest(scale, self.scale_names())}"
                              f" Its scales: {', '.join(self.scale_names())}")
        return dict(self.scales[scale])


class TrainingMethod(abc.ABC):
    """Composes one D step and one G step from a generator, a discriminator, an objective and terms.

    ``d_losses`` and ``g_losses`` return named scalar losses; the trainer sums them, scales them for
    mixed precision and accumulation, runs backward and steps the optimisers. It owns everything
    else (devices, DDP, EMA, checkpoints, logging).

    ``stats``: detached 0-d device tensors for the training-health monitor (:mod:`gensynth.train.health`),
    refreshed by every step: ``d_spread`` (:func:`~gensynth.train.health.output_spread` of D's outputs in the
    D step, when ``measure_outputs`` is set: the trainer sets it while its health monitor is on) and, when
    ``measure_images`` was set before the step, ``label_dependence`` and
    ``label_dependence_real`` (:func:`~gensynth.train.health.label_dependence` of the G step's fake and real
    images). A method that fills none of them is simply not judged on them.
    """

    def __init__(self, objective: Objective, terms: Sequence[LossTerm]):
        self.objective = objective
        self.terms = list(terms)
        self.stats: dict[str, Tensor] = {}
        self.measure_outputs = False
        self.measure_images = False

    @abc.abstractmethod
    def d_losses(self, G: Callable, D: Callable, real: Tensor, cond: Condition, step: int = 0) -> dict[str, Tensor]: ...

    @abc.abstractmethod
    def g_losses(self, G: Callable, D: Callable, real: Tensor, cond: Condition, step: int = 0) -> dict[str, Tensor]: ...


class Segmenter(nn.Module, abc.ABC):
    """A semantic segmenter for mIoU: image (B, 3, H, W) in [-1, 1] -> logits (B, C, H, W)."""

    num_classes: int

    @abc.abstractmethod
    def forward(self, image: Tensor) -> Tensor: ...


def check_label_range(label_ids: Tensor, num_classes: int) -> None:
    """Raise naming the offending id when ``label_ids`` leaves [0, num_classes). Reads the values: call it on
    CPU tensors (on a GPU tensor it is a host-device synchronisation)."""
    if label_ids.numel():
        lo, hi = int(label_ids.min()), int(label_ids.max())
        if lo < 0 or hi >= num_classes:
            bad = hi if hi >= num_classes else lo
            raise ValueError(f"label id {bad} is outside the model's classes 0..{num_classes - 1}")


def one_hot(label_ids: Tensor, num_classes: int, dtype: torch.dtype = torch.float32, *, check: bool = True) -> Tensor:
    """(B, H, W) int64 -> (B, N, H, W) one-hot; raises naming the offending id when out of range.

    ``check=False`` skips the range check (which synchronises with the device): for ids already checked on CPU."""
    if check:
        check_label_range(label_ids, num_classes)
    out = torch.zeros(label_ids.shape[0], num_classes, *label_ids.shape[1:], dtype=dtype, device=label_ids.device)
    return out.scatter_(1, label_ids.unsqueeze(1), 1.0)


def instance_edges(instance: Tensor) -> Tensor:
    """(B, H, W) or (B, 1, H, W) instance ids -> (B, 1, H, W) float edge map as SPADE computes it:
    1 wherever a pixel differs from its left/right/up/down neighbour."""
    if instance.dim() == 3:
        instance = instance.unsqueeze(1)
    edge = torch.zeros_like(instance, dtype=torch.bool)
    dx = instance[..., :, 1:] != instance[..., :, :-1]
    dy = instance[..., 1:, :] != instance[..., :-1, :]
    edge[..., :, 1:] |= dx
    edge[..., :, :-1] |= dx
    edge[..., 1:, :] |= dy
    edge[..., :-1, :] |= dy
    return edge.float()

