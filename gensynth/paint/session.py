"""The model side of ``gensynth paint``: one warm generator, and what the page sends turned into images.

A :class:`PaintSession` holds a :class:`gensynth.generate.api.Synthesizer` (EMA generator, eval mode) for the
whole life of the server and serialises calls to it (one request at a time, nothing batched).

What the page sends for one update is a :class:`gensynth.paint.protocol.GenerateRequest`: the label map, the
noise as a *seed map* (turned into noise by :meth:`Synthesizer.seed_map_noise`: re-sampling a region is "give
these pixels a new seed", which the page can undo; one seed everywhere is the global noise of ``gensynth generate
--seed``), and optionally a style image for generators with a style encoder (SPADE with use_vae).

Label maps leave and enter as id PNGs of the dataset's *raw* ids, exactly what ``gensynth generate --labels``
reads (:func:`gensynth.generate.labels.read_id_png`).
"""
from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from gensynth.errors import ConfigError, DataError, IncompatibleError
from gensynth.generate.api import Synthesizer
from gensynth.generate.labels import check_size, raw_to_model_ids, read_id_png
from gensynth.generate.sheet import to_pil
from gensynth.interfaces import Condition, NoiseKind
from gensynth.paint.protocol import MAX_SIDE, GenerateRequest, decode_grid, decode_style, encode_grid

@dataclass
class PaletteEntry:
    """A paintable class: model id, name, colour (R, G, B) and the raw id written to label PNGs."""

    id: int
    name: str
    color: tuple[int, int, int]
    raw_id: int


@dataclass
class Timing:
    """Milliseconds of the last request: model forward and PNG encoding."""

    model_ms: float = 0.0
    encode_ms: float = 0.0


@dataclass
class PaintSession:
    """A warm generator for the painting page. ``size``: (H, W) of a blank canvas (default: training size)."""

    syn: Synthesizer
    size: tuple[int, int]
    initial: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (name, (H, W) model ids)
    config: Any = None  # the run's RunConfig when loaded from a checkpoint
    precision: str = "fp32"  # "fp32", or "bf16": the generator under bf16 autocast (faster on CPUs with AMX)
    blank_class: int | None = None  # class of a blank canvas (and the eraser's default); None: see default_class
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str | torch.device = "cpu",
                        size: tuple[int, int] | None = None, precision: str = "fp32") -> "PaintSession":
        """Load a run or checkpoint directory (EMA generator) through the verified checkpoint loader
        (:func:`gensynth.api.load_model`: safetensors, checksums, configuration read without trusting commands)."""
        from gensynth.api import load_model

        m = load_model(path, ema=True, device=device)
        syn = Synthesizer(m.generator, m.parts, size=tuple(m.config.data.size) if m.config.data.size else None,
                          device=device, source=str(m.checkpoint.path if m.checkpoint else path))
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be fp32 or bf16, got {precision!r}")
        session = cls(syn=syn, size=tuple(size or syn.size), config=m.config, precision=precision)
        check_size(np.zeros(session.size), syn.size, syn.size_multiple, "of --size")
        return session

    # ------------------------------------------------------------------------------------------
    @property
    def spatial_noise(self) -> bool:
        return self.syn.generator.noise == NoiseKind.SPATIAL and self.syn.z_dim > 0

    @property
    def takes_noise(self) -> bool:
        return self.syn.generator.noise != NoiseKind.NONE and self.syn.z_dim > 0

    @property
    def style_image(self) -> bool:
        return bool(getattr(self.syn.generator, "uses_style_image", False))

    def palette(self) -> list[PaletteEntry]:
        """The classes a label PNG can hold (those with a raw id), in model-id order; raw id = smallest one."""
        table = np.asarray(self.syn.spec.raw_to_class, dtype=np.int64)
        out = []
        for c in self.syn.spec.classes:
            raws = np.nonzero(table == c.id)[0]
            if raws.size:
                out.append(PaletteEntry(c.id, c.name, tuple(int(v) for v in c.color), int(raws[0])))
        return out

    def default_class(self) -> int:
        """The class a blank canvas starts with: ``blank_class`` when set, else the dataset's don't-care class if
        paintable, else the first paintable class."""
        pal = self.palette()
        ids = [p.id for p in pal]
        if self.blank_class is not None:
            return self.blank_class
        dc = self.syn.spec.dontcare
        return dc if dc in ids else ids[0]

    def info(self) -> dict:
        """Everything the page needs to build itself (JSON-ready)."""
        spec = self.syn.spec
        return {
            "dataset": spec.name, "source": self.syn.source, "generator": self.syn.parts.generator,
            "height": self.size[0], "width": self.size[1], "train_size": list(self.syn.size),
            "size_multiple": self.syn.size_multiple, "num_classes": self.syn.num_classes,
            "classes": [{"id": p.id, "name": p.name, "color": list(p.color), "raw_id": p.raw_id}
                        for p in self.palette()],
            "default_class": self.default_class(), "noise": self.syn.generator.noise.value,
            "takes_noise": self.takes_noise, "spatial_noise": self.spatial_noise, "style_image": self.style_image,
            "samples": [name for name, _ in self.initial], "precision": self.precision,
        }

    # ------------------------------------------------------------------------------------------
    def set_blank_class(self, name_or_id: str | int) -> None:
        """Start blank canvases with this class (name or model id); DataError when it is not paintable."""
        cid = self.syn.class_id(name_or_id)
        if cid not in [p.id for p in self.palette()]:
            raise DataError(f"class {name_or_id!r} cannot be stored in a label PNG of dataset {self.syn.spec.name!r} "
                            f"(no raw id maps to it); choose another blank class")
        self.blank_class = cid

    def check_ids(self, ids: np.ndarray, where: str) -> None:
        """DataError when ``ids`` holds a class a label PNG cannot store, or has a size the model cannot take."""
        allowed = np.zeros(self.syn.num_classes, dtype=bool)
        allowed[[p.id for p in self.palette()]] = True
        bad = np.unique(ids[(ids < 0) | (ids >= len(allowed))])
        inside = ids[(ids >= 0) & (ids < len(allowed))]
        bad = np.union1d(bad, np.unique(inside[~allowed[inside]]))
        if bad.size:
            raise DataError(f"label map {where} contains class ids {bad[:10].tolist()} that are not paintable "
                            f"classes of dataset {self.syn.spec.name!r} (model classes 0..{self.syn.num_classes - 1})")
        check_size(ids, self.syn.size, self.syn.size_multiple, where)

    def read_label_png(self, data: bytes, where: str = "(uploaded)") -> np.ndarray:
        """A label file (an id PNG of the dataset's raw ids, or a colour mask in its class colours: what training and
        ``gensynth generate --labels`` read) -> (H, W) model ids, validated."""
        if len(data) == 0:
            raise DataError(f"{where} is empty")
        raw = read_id_png(io.BytesIO(data), self.syn.spec, where=where)  # id PNG or colour mask, as training reads
        if raw.ndim != 2:
            raise DataError(f"{where} is not a single-channel id image (shape {raw.shape})")
        if max(raw.shape) > MAX_SIDE:
            raise DataError(f"{where} is {raw.shape[0]}x{raw.shape[1]}; the painter accepts sides up to {MAX_SIDE}")
        ids = raw_to_model_ids(raw, self.syn.spec, where)
        self.check_ids(ids, where)
        return ids

    def label_png(self, ids: np.ndarray) -> bytes:
        """(H, W) model ids -> id PNG of the dataset's raw ids (8-bit, or 16-bit when a raw id exceeds 255)."""
        self.check_ids(ids, "(painted)")
        lut = np.zeros(self.syn.num_classes, dtype=np.int64)
        for p in self.palette():
            lut[p.id] = p.raw_id
        raw = lut[ids]
        img = Image.fromarray(raw.astype(np.uint8), "L") if raw.max(initial=0) <= 255 else \
            Image.fromarray(raw.astype(np.uint16))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    def label_preview_png(self, ids: np.ndarray) -> bytes:
        """(H, W) model ids -> colourised PNG (for people)."""
        buf = io.BytesIO()
        self.syn.colorize(torch.from_numpy(ids)).save(buf, format="PNG")
        return buf.getvalue()

    # ------------------------------------------------------------------------------------------
    def noise_for(self, seeds: list[int], noise: np.ndarray | None) -> torch.Tensor | None:
        """The generator's z for a seed map (:meth:`Synthesizer.seed_map_noise`) shaped for ``generate``:
        (1, 1, z_dim) global or (1, 1, z_dim, H, W) spatial; None without noise. Models without spatial noise
        use ``seeds[0]`` everywhere."""
        z = self.syn.seed_map_noise(seeds, noise if self.spatial_noise else None)
        if z is None:
            return None
        return z.view(1, 1, *z.shape)

    def style_tensor(self, data: bytes, height: int, width: int) -> torch.Tensor:
        """Style image file bytes -> (1, 3, H, W) in [-1, 1] resized (bilinear) to the canvas size."""
        if not self.style_image:
            raise IncompatibleError(f"generator {self.syn.parts.generator!r} has no style encoder "
                                    f"(style images need e.g. SPADE with use_vae=true)")
        try:
            with Image.open(io.BytesIO(data)) as im:
                rgb = im.convert("RGB").resize((width, height), Image.BILINEAR)
        except Exception as exc:
            raise DataError(f"cannot read the style image: {exc}") from exc
        x = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).float() / 127.5 - 1
        return x.unsqueeze(0)

    @torch.no_grad()
    def generate(self, req: GenerateRequest) -> tuple[Image.Image, Timing]:
        """One request -> the RGB image and its timing. Raises DataError for bad input."""
        ids = decode_grid(req.ids, req.height, req.width, "label ids")
        self.check_ids(ids, "(painted)")
        noise = None if req.noise is None else decode_grid(req.noise, req.height, req.width, "noise map")
        autocast = torch.autocast(self.syn.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        with self._lock, autocast:
            t0 = time.perf_counter()
            labels = torch.from_numpy(ids).unsqueeze(0)
            if req.style is not None:
                image = self._styled(labels, self.style_tensor(decode_style(req.style), req.height, req.width),
                                     req.seeds[0])
            else:
                z = self.noise_for(req.seeds, noise)
                image = self.syn.generate(labels, z=z, samples=1)[0, 0]
            t1 = time.perf_counter()
        pil = to_pil(image)[0]
        return pil, Timing(model_ms=1000 * (t1 - t0))

    def _styled(self, labels: torch.Tensor, style: torch.Tensor, seed: int) -> torch.Tensor:
        """Generate with the style encoder: the generator draws z from q(z | style); ``seed`` fixes the draw."""
        cond = self.syn.condition(labels)
        cond = Condition(labels=cond.labels, instance_edges=cond.instance_edges, ids=cond.ids,
                         style_image=style.to(self.syn.device))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = self.syn.generator(cond, None)
        return out.image[0].float().cpu()

    def image_png(self, image: Image.Image, timing: Timing) -> bytes:
        t0 = time.perf_counter()
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=1)
        timing.encode_ms = 1000 * (time.perf_counter() - t0)
        return buf.getvalue()

    def dataset_samples(self, limit: int) -> list[tuple[str, np.ndarray]]:
        """The first ``limit`` label maps of the run's validation split, read as the run's configuration says
        (data.root, data.val_split; procedural datasets such as ``demo`` are generated): [(key, (H, W) ids)]."""
        if self.config is None:
            raise DataError("this session was not loaded from a checkpoint: it has no run configuration to read "
                            "dataset samples from")
        from gensynth.data.loader import eval_batches

        data = self.config.data.model_copy(update={"num_workers": 0})
        out = []
        for batch in eval_batches(data, self.syn.spec, batch_size=1, limit=limit):
            out.append((batch.keys[0], batch.label[0].numpy().astype(np.int64)))
        return out

    def warm_up(self) -> float:
        """One blank-canvas generation so the first stroke does not pay for lazy initialisation; returns ms."""
        h, w = self.size
        req = GenerateRequest(width=w, height=h, ids=encode_grid(np.full((h, w), self.default_class())))
        t0 = time.perf_counter()
        self.generate(req)
        return 1000 * (time.perf_counter() - t0)
