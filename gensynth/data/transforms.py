"""Paired transforms as the official OASIS code: resize (image bicubic, label nearest) to (H, W),
optional horizontal flip of both, image to float in [-1, 1]; labels stay integer maps."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from gensynth.data.shards import IMAGE_EXTS, decode_id_png, nearest_resize, resize_image
from gensynth.errors import DataError


@dataclass
class Sample:
    """image: (3, H, W) float32 in [-1, 1]; label: (H, W) int64 model classes; instance: (H, W) int64 or None."""

    key: str
    image: Tensor
    label: Tensor
    instance: Tensor | None


class SampleDecoder:
    """Decodes one shard sample {ext: bytes} into a :class:`Sample` of size (H, W).

    raw_to_class: the dataset's table from raw ids to model classes (-1 = invalid).
    """

    def __init__(self, raw_to_class: np.ndarray, size: tuple[int, int], resample: str = "bicubic",
                 dataset: str = "", with_instances: bool = True):
        self.table = np.asarray(raw_to_class, dtype=np.int64)
        self.size = (int(size[0]), int(size[1]))
        self.resample = resample
        self.dataset = dataset
        self.with_instances = with_instances

    def __call__(self, key: str, files: dict[str, bytes], flip: bool = False, where: str = "") -> Sample:
        ext = next((e for e in IMAGE_EXTS if e in files), None)
        if ext is None or "label.png" not in files:
            missing = "image" if ext is None else "label.png"
            raise DataError(f"{where}: sample {key!r} has no {missing} (members: {sorted(files)})")
        try:
            img = Image.open(io.BytesIO(files[ext]))
            img = img.convert("RGB")
            raw_label = decode_id_png(files["label.png"])
            raw_inst = decode_id_png(files["inst.png"]) if self.with_instances and "inst.png" in files else None
            w, h = img.size
            for what, m in (("label.png", raw_label), ("inst.png", raw_inst)):
                if m is not None and m.shape != (h, w):
                    raise DataError(f"{where}: sample {key!r}: {what} is {m.shape[1]}x{m.shape[0]} (WxH) but its "
                                    f"image is {w}x{h}; image and maps must have one size")
            img = resize_image(img, self.size, self.resample)
            label = nearest_resize(raw_label, self.size)
            inst = None if raw_inst is None else nearest_resize(raw_inst, self.size)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{where}: sample {key!r} cannot be decoded ({type(exc).__name__}: {exc})") from None
        if label.size and (label.max() >= len(self.table) or self.table[label].min() < 0):
            bad = int(next(v for v in np.unique(label) if v >= len(self.table) or self.table[v] < 0))
            raise DataError(f"{where}: sample {key!r} has label value {bad}, not one of the {self.dataset} ids")
        classes = self.table[label]
        image = np.asarray(img, dtype=np.float32)
        if flip:
            image, classes = image[:, ::-1], classes[:, ::-1]
            inst = None if inst is None else inst[:, ::-1]
        image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).div_(127.5).sub_(1.0)
        label_t = torch.from_numpy(np.ascontiguousarray(classes))
        inst_t = None if inst is None else torch.from_numpy(np.ascontiguousarray(inst).astype(np.int64))
        return Sample(key, image_t, label_t, inst_t)
