"""Small generated inputs and probe parts for checking plugins (:mod:`gensynth.testing`): a labelled batch, and a
generator, discriminator (of any output kind) and objective to run a part against."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from gensynth.interfaces import (Capability, Condition, Discriminator, DiscriminatorOutput, DOutputKind, Generator,
                                 GeneratorOutput, NoiseKind, Objective, one_hot)


@dataclass
class ProbeSettings:
    """The generated batch: ``batch`` images of ``size`` (H, W) labelled with ``num_classes`` classes."""

    batch: int = 2
    size: tuple[int, int] = (64, 64)
    num_classes: int = 4
    seed: int = 0




def make_batch(s: ProbeSettings, *, edges: bool = False, style: bool = False) -> tuple[Tensor, Condition]:
    """(real (B, 3, H, W) in [-1, 1], Condition with one-hot labels of blocky random ids, edges, style image)."""
    g = torch.Generator().manual_seed(s.seed)
    h, w = s.size
    coarse = torch.randint(0, s.num_classes, (s.batch, 1, max(1, h // 8), max(1, w // 8)), generator=g)
    ids = nn.functional.interpolate(coarse.float(), size=(h, w), mode="nearest").long()[:, 0]
    real = torch.rand(s.batch, 3, h, w, generator=g) * 2 - 1
    labels = one_hot(ids, s.num_classes)
    cond = Condition(labels=labels, ids=ids)
    if edges:
        from gensynth.interfaces import instance_edges

        cond.instance_edges = instance_edges(ids)
    if style:
        cond.style_image = real
    return real, cond


class ProbeDiscriminator(Discriminator):
    """A tiny discriminator of any :class:`DOutputKind` (with features), to check objectives and loss terms."""

    takes_labels = True

    def __init__(self, kind: DOutputKind, num_classes: int, provides_features: bool = True):
        super().__init__()
        self.output_kind = kind
        self.provides_features = provides_features
        self.num_classes = num_classes
        out = num_classes + 1 if kind == DOutputKind.PIXEL_CLASSES else 1
        self.body = nn.Conv2d(3 + num_classes, 4, 3, padding=1)
        self.head = nn.Conv2d(4, out, 1)

    def forward(self, image: Tensor, cond: Condition | None = None) -> DiscriminatorOutput:
        labels = cond.labels.to(image.dtype) if cond is not None else image.new_zeros(
            image.shape[0], self.num_classes, *image.shape[2:])
        f = torch.relu(self.body(torch.cat([image, labels], 1)))
        logits = self.head(f)
        if self.output_kind == DOutputKind.PATCH:
            small = nn.functional.avg_pool2d(f, 2)
            return DiscriminatorOutput(self.output_kind, [logits, self.head(small)],
                                       [[f], [small]] if self.provides_features else None)
        if self.output_kind == DOutputKind.IMAGE:
            logits = logits.mean(dim=(2, 3))
        return DiscriminatorOutput(self.output_kind, logits, [[f]] if self.provides_features else None)


class ProbeGenerator(Generator):
    """A tiny generator with 3D noise: [labels ; z] -> tanh image; ``aux`` holds mu/logvar (B, 8) when asked (loss
    terms needing them). z: (B, 2) broadcast over the pixels, (B, 2, H, W), or None (sampled)."""

    uses_style_image = False
    noise = NoiseKind.SPATIAL
    z_dim = 2

    def __init__(self, num_classes: int, with_aux: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.with_aux = with_aux
        self.conv = nn.Conv2d(num_classes + self.z_dim, 3, 3, padding=1)
        self.latent = nn.Parameter(torch.zeros(2, 8))

    def forward(self, cond, z=None) -> GeneratorOutput:
        labels = cond.labels
        b, _, h, w = labels.shape
        if z is None:
            z = torch.randn(b, self.z_dim, device=labels.device, dtype=labels.dtype)
        zmap = z[:, :, None, None].expand(b, self.z_dim, h, w) if z.dim() == 2 else z
        image = torch.tanh(self.conv(torch.cat([labels, zmap.to(labels.dtype)], 1)))
        aux = {}
        if self.with_aux:
            aux = {"mu": self.latent[:1].expand(b, -1) + image.mean(), "logvar": self.latent[1:].expand(b, -1)}
        return GeneratorOutput(image, aux)


class ProbeObjective(Objective):
    """Scores any output kind (softplus of the logits' mean): lets loss terms be checked without a real objective."""

    accepts = frozenset(DOutputKind)
    name = "probe"

    @staticmethod
    def _mean(out: DiscriminatorOutput) -> Tensor:
        scales = out.logits if isinstance(out.logits, (list, tuple)) else [out.logits]
        return sum(x.float().mean() for x in scales) / len(scales)

    def d_loss(self, out, cond, target) -> Tensor:
        return nn.functional.softplus(self._mean(out) * (-1 if target == "real" else 1))

    def g_loss(self, out, cond) -> Tensor:
        return nn.functional.softplus(-self._mean(out))


def probe_kind(requires: Iterable[Capability]) -> DOutputKind:
    return DOutputKind.PIXEL_CLASSES if Capability.PIXEL_OUTPUT in set(requires) else DOutputKind.PATCH


def grads_reached(params: Iterable[Tensor]) -> tuple[int, int, bool]:
    """(parameters with a gradient, trainable parameters, all gradients finite)."""
    params = [p for p in params if p.requires_grad]
    got = [p for p in params if p.grad is not None]
    finite = all(bool(torch.isfinite(p.grad).all()) for p in got)
    return len(got), len(params), finite

