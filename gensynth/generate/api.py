"""Sampling and editing with a trained generator: the Python API behind ``gensynth generate``.

    >>> from gensynth.generate.api import Synthesizer
    >>> syn = Synthesizer.from_checkpoint("runs/oasis-demo")
    >>> ids = syn.read_labels("label.png")              # (1, H, W) model class ids
    >>> images = syn.generate(ids, samples=4, seed=0)    # (1, 4, 3, H, W) in [-1, 1]
    >>> syn.to_pil(images)[0].save("a.png")

Noise control (generators with 3D noise, e.g. OASIS): ``generate`` draws one z_dim vector per image and the
generator broadcasts it over the pixels (global noise). ``resample_region`` builds spatial noise
(B, z_dim, H, W) equal to a base vector everywhere except inside a region (a class or a mask), where a new
vector replaces it. ``interpolate`` walks linearly from one vector to another in N steps.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gensynth.errors import DataError, IncompatibleError
from gensynth.generate.labels import check_model_ids, list_label_files, read_label_map
from gensynth.generate.sheet import colorize, palette, to_pil
from gensynth.interfaces import Condition, Generator, NoiseKind, one_hot

LabelsLike = Tensor | np.ndarray | str | Path


@dataclass
class RegionEdit:
    """Result of :meth:`Synthesizer.resample_region`.

    base: (B, 3, H, W) image from the base noise; samples: (B, K, 3, H, W) with the region re-sampled;
    mask: (B, H, W) bool, the region whose noise changed.
    """

    base: Tensor
    samples: Tensor
    mask: Tensor


def to_model_ids(ids: Tensor, dontcare: int | None, dontcare_last: bool, num_classes: int) -> Tensor:
    """Dataset class ids -> the network's channel ids: with ``dontcare_last`` (SPADE) the don't-care class moves
    to the last channel and the classes after it shift down by one; otherwise unchanged."""
    if not dontcare_last or dontcare is None:
        return ids
    return torch.where(ids == dontcare, torch.full_like(ids, num_classes - 1), ids - (ids > dontcare).long())


class Synthesizer:
    """A generator plus what is needed to feed it: dataset spec, training size, device.

    generator: eval-mode Generator; parts: gensynth.build.Parts of its run; size: (H, W) training size.
    """

    def __init__(self, generator: Generator, parts, *, size: tuple[int, int] | None = None,
                 device: str | torch.device = "cpu", source: str = "generator"):
        self.generator = generator.to(device).eval()
        self.parts = parts
        self.spec = parts.dataset
        self.device = torch.device(device)
        self.size = tuple(size or self.spec.default_size)
        self.source = source

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str | torch.device = "cpu", ema: bool = True) -> "Synthesizer":
        """Load a run directory or checkpoint directory (EMA generator unless ``ema=False``)."""
        from gensynth.api import load_model

        m = load_model(path, ema=ema, device=device)
        size = tuple(m.config.data.size) if m.config.data.size else None
        return cls(m.generator, m.parts, size=size, device=device,
                   source=str(m.checkpoint.path if m.checkpoint else path))

    # ------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.parts.num_classes

    @property
    def z_dim(self) -> int:
        return int(getattr(self.generator, "z_dim", 0) or 0)

    @property
    def size_multiple(self) -> int:
        blocks = getattr(self.generator, "num_res_blocks", None)
        return 2 ** (blocks - 1) if blocks else 1

    def class_id(self, name_or_id: str | int) -> int:
        """A class given by model id or by name (as listed by the dataset) -> model id; DataError otherwise."""
        names = {c.name: c.id for c in self.spec.classes}
        if isinstance(name_or_id, int) or str(name_or_id).lstrip("-").isdigit():
            cid = int(name_or_id)
            if 0 <= cid < self.num_classes:
                return cid
            raise DataError(f"class id {cid} is outside the model's classes 0..{self.num_classes - 1}")
        if name_or_id in names:
            return names[name_or_id]
        from gensynth.errors import suggest

        raise DataError(f"dataset {self.spec.name!r} has no class named {name_or_id!r}.{suggest(name_or_id, names)} "
                        f"Classes: {', '.join(names)}")

    def read_labels(self, path: str | Path, fit: str = "resize") -> Tensor:
        """A label file or a folder of them -> (B, H, W) int64 model class ids (all must share one size).

        fit: ``"resize"`` maps of another size to the training size (nearest, as training does); ``"keep"`` their
        own size (sides multiples of :attr:`size_multiple`)."""
        maps = [read_label_map(f, self.spec, self.size, self.size_multiple, fit=fit)
                for f in list_label_files(path, self.spec)]
        shapes = {tuple(m.shape) for m in maps}
        if len(shapes) > 1:
            raise DataError(f"label maps in {path} differ in size ({sorted(shapes)}); generate them separately")
        return torch.stack(maps)

    def _ids(self, labels: LabelsLike) -> Tensor:
        if isinstance(labels, (str, Path)):
            return self.read_labels(labels)
        t = torch.as_tensor(labels)
        if t.dim() == 4:  # one-hot (B, N, H, W) in the dataset's class order
            t = t.argmax(1)
        if t.dim() == 2:
            t = t.unsqueeze(0)
        if t.dim() != 3:
            raise DataError(f"labels must be (H, W) or (B, H, W) class ids or (B, N, H, W) one-hot, "
                            f"got shape {tuple(t.shape)}")
        t = t.long()
        check_model_ids(t, self.num_classes)
        return t

    def condition(self, ids: Tensor) -> Condition:
        """(B, H, W) dataset class ids -> Condition on the device (one-hot in the network's channel order)."""
        ids = to_model_ids(ids.to(self.device), self.spec.dontcare, self.parts.dontcare_last, self.num_classes)
        labels = one_hot(ids, self.num_classes)
        edges = None
        if getattr(self.generator, "uses_instance_edges", False):
            edges = torch.zeros(ids.shape[0], 1, *ids.shape[-2:], device=self.device)  # no instance maps given
        return Condition(labels=labels, instance_edges=edges, ids=ids)

    def _rng(self, seed: int | None) -> torch.Generator:
        g = torch.Generator(device="cpu")
        g.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2 ** 31 - 1, (1,)).item()))
        return g

    def sample_z(self, n: int, seed: int | None = None, rng: torch.Generator | None = None) -> Tensor | None:
        """(n, z_dim) standard normal vectors drawn on the CPU (same numbers on every device), or None."""
        if self.z_dim == 0 or self.generator.noise == NoiseKind.NONE:
            return None
        return torch.randn(n, self.z_dim, generator=rng or self._rng(seed))

    @torch.no_grad()
    def _run(self, ids: Tensor, z: Tensor | None) -> Tensor:
        cond = self.condition(ids)
        out = self.generator(cond, None if z is None else z.to(self.device))
        return out.image.float().cpu()

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, labels: LabelsLike, z: Tensor | None = None, samples: int = 1, seed: int | None = None,
                 batch_size: int = 8) -> Tensor:
        """labels -> images (B, K, 3, H, W) in [-1, 1], K = ``samples``.

        z: None (drawn from ``seed``), (z_dim,) for every image, (K, z_dim) per sample, (B, K, z_dim), or spatial
        (B, K, z_dim, H, W). The same seed gives the same images.
        """
        ids = self._ids(labels)
        b = ids.shape[0]
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if z is None:
            zz = self.sample_z(b * samples, seed)
            if zz is None and samples > 1:
                warnings.warn(f"generator {self.parts.generator!r} takes no noise: the {samples} samples are identical")
            zz = None if zz is None else zz.view(b, samples, -1)
        else:
            zz = self._expand_z(z, b, samples)
        flat_ids = ids.repeat_interleave(samples, 0)
        flat_z = None if zz is None else zz.reshape(b * samples, *zz.shape[2:])
        out = [self._run(flat_ids[i:i + batch_size], None if flat_z is None else flat_z[i:i + batch_size])
               for i in range(0, b * samples, batch_size)]
        return torch.cat(out).view(b, samples, *out[0].shape[1:])

    def _expand_z(self, z: Tensor, b: int, k: int) -> Tensor:
        if self.z_dim == 0:
            raise IncompatibleError(f"generator {self.parts.generator!r} takes no noise; do not pass z")
        z = torch.as_tensor(z, dtype=torch.float32)
        if z.shape[0 if z.dim() == 1 else -1 if z.dim() <= 3 else 2] != self.z_dim:
            raise ValueError(f"z must carry {self.z_dim} noise channels, got shape {tuple(z.shape)}")
        if z.dim() == 1:
            return z.expand(b, k, -1)
        if z.dim() == 2:
            if z.shape[0] != k:
                raise ValueError(f"z of shape (K, z_dim) must have K = samples = {k}, got {z.shape[0]}")
            return z.unsqueeze(0).expand(b, -1, -1)
        if z.shape[:2] != (b, k):
            raise ValueError(f"z must start with (B, K) = ({b}, {k}), got {tuple(z.shape)}")
        return z

    def _require_spatial(self, what: str) -> None:
        if self.generator.noise != NoiseKind.SPATIAL or self.z_dim == 0:
            raise IncompatibleError(f"{what} needs a generator with 3D (spatial) noise such as OASIS; "
                                    f"generator {self.parts.generator!r} ({self.generator.noise.value} noise) has none")

    def region_mask(self, ids: Tensor, region: str | int | Tensor | np.ndarray | Path) -> Tensor:
        """(B, H, W) bool: pixels of a class (id or name) or of a mask (H, W) / mask PNG (non-zero = inside)."""
        if isinstance(region, Path) or (isinstance(region, str) and region.lower().endswith(".png")):
            from PIL import Image

            try:
                with Image.open(region) as im:
                    m = torch.from_numpy(np.asarray(im.convert("L")) > 0)
            except Exception as exc:
                raise DataError(f"cannot read mask {region}: {exc}") from exc
            if tuple(m.shape) != tuple(ids.shape[-2:]):
                raise DataError(f"mask {region} is {m.shape[0]}x{m.shape[1]} but the label maps are "
                                f"{ids.shape[-2]}x{ids.shape[-1]}")
            return m.expand_as(ids)
        if isinstance(region, (Tensor, np.ndarray)):
            m = torch.as_tensor(region).bool()
            if tuple(m.shape[-2:]) != tuple(ids.shape[-2:]):
                raise DataError(f"mask shape {tuple(m.shape)} does not match label maps {tuple(ids.shape)}")
            return m.expand_as(ids)
        return ids == self.class_id(region)

    @torch.no_grad()
    def resample_region(self, labels: LabelsLike, region, samples: int = 1, seed: int | None = None,
                        z: Tensor | None = None) -> RegionEdit:
        """Keep one noise vector everywhere and draw new vectors only inside ``region`` (class or mask).

        z: optional base vectors (B, z_dim) or (z_dim,). Returns :class:`RegionEdit`.
        """
        self._require_spatial("local re-sampling")
        ids = self._ids(labels)
        b, (h, w) = ids.shape[0], ids.shape[-2:]
        mask = self.region_mask(ids, region)
        if not mask.any():
            raise DataError(f"the region {region!r} is empty in these label maps: nothing to re-sample")
        rng = self._rng(seed)
        base = self.sample_z(b, rng=rng) if z is None else torch.as_tensor(z, dtype=torch.float32).expand(b, self.z_dim)
        new = self.sample_z(b * samples, rng=rng).view(b, samples, self.z_dim)
        base_map = base[:, :, None, None].expand(b, self.z_dim, h, w)
        m = mask[:, None, None].float()  # (B, 1, 1, H, W)
        spatial = base_map[:, None] * (1 - m) + new[..., None, None] * m  # (B, K, z, H, W)
        base_img = self._run(ids, base_map.contiguous())
        flat = spatial.reshape(b * samples, self.z_dim, h, w)
        imgs = self._run(ids.repeat_interleave(samples, 0), flat).view(b, samples, 3, h, w)
        return RegionEdit(base=base_img, samples=imgs, mask=mask)

    def seed_map_noise(self, seeds: list[int], index: Tensor | np.ndarray | None = None) -> Tensor | None:
        """Noise from a *seed map*: pixel (y, x) gets the vector of ``seeds[index[y, x]]`` (each drawn as
        :meth:`sample_z` draws it from that seed). index: (H, W) ints into ``seeds``, or None for ``seeds[0]``
        everywhere.

        Returns (z_dim,) when one vector covers every pixel (global noise: the same images as ``generate(...,
        seed=seeds[0])``), else spatial (z_dim, H, W), which needs 3D noise (OASIS); None without noise. Editing
        a region = pointing its pixels at a new seed (what ``gensynth paint`` does; cf. :meth:`resample_region`).
        """
        if self.z_dim == 0 or self.generator.noise == NoiseKind.NONE:
            return None
        if not seeds:
            raise ValueError("seed_map_noise needs at least one seed")
        idx = None if index is None else torch.as_tensor(index).long()
        used = [0] if idx is None or idx.numel() == 0 else torch.unique(idx).tolist()
        bad = [k for k in used if not 0 <= k < len(seeds)]
        if bad:
            raise DataError(f"the noise map refers to seed index {bad[-1]} but only {len(seeds)} seeds were given")
        if len(used) == 1:
            return self.sample_z(1, seed=seeds[used[0]])[0]
        self._require_spatial("a noise map with several seeds")
        vectors = torch.zeros(len(seeds), self.z_dim)
        for k in used:
            vectors[k] = self.sample_z(1, seed=seeds[k])[0]
        return vectors[idx].permute(2, 0, 1).contiguous()  # (z_dim, H, W)

    @torch.no_grad()
    def interpolate(self, labels: LabelsLike, steps: int, z0: Tensor | None = None, z1: Tensor | None = None,
                    seed: int | None = None) -> Tensor:
        """Images along z_t = (1 - t) z0 + t z1, t = 0 .. 1 in ``steps`` steps -> (B, steps, 3, H, W)."""
        if self.z_dim == 0:
            raise IncompatibleError(f"interpolation needs a generator that takes noise; "
                                    f"generator {self.parts.generator!r} takes none")
        if steps < 2:
            raise ValueError(f"interpolation needs at least 2 steps, got {steps}")
        ids = self._ids(labels)
        rng = self._rng(seed)
        a = self.sample_z(1, rng=rng)[0] if z0 is None else torch.as_tensor(z0, dtype=torch.float32)
        c = self.sample_z(1, rng=rng)[0] if z1 is None else torch.as_tensor(z1, dtype=torch.float32)
        t = torch.linspace(0, 1, steps).unsqueeze(1)
        path = (1 - t) * a + t * c  # (steps, z_dim)
        return self.generate(ids, z=path, samples=steps)

    # ------------------------------------------------------------------------------------------
    @staticmethod
    def to_pil(images: Tensor):
        """(…, 3, H, W) in [-1, 1] -> flat list of PIL images."""
        return to_pil(images)

    def colorize(self, ids: Tensor):
        """(H, W) model ids -> PIL colour image with the dataset's palette."""
        return colorize(ids, palette(self.spec.classes))
