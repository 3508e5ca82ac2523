"""Reading user label maps for generation: PNG files of a dataset's raw ids -> model class ids.

A label PNG holds the dataset's raw (official) ids, one per pixel (8- or 16-bit greyscale or palette PNG);
they are mapped through the spec's ``raw_to_class`` table. Wrong ids and wrong sizes raise DataError naming the
file, the offending values and what is allowed.
"""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from gensynth.errors import DataError
from gensynth.interfaces import DatasetSpec

LABEL_SUFFIXES = (".png",)


def list_label_files(path: str | Path) -> list[Path]:
    """A PNG file -> [it]; a folder -> its PNG files (sorted, non-recursive). DataError when none."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in LABEL_SUFFIXES and f.is_file())
        if not files:
            raise DataError(f"label folder {p} holds no .png label maps")
        return files
    raise DataError(f"label path {p} does not exist (expected a label PNG, a folder of them, or shards)")


def read_id_png(path: str | Path | BinaryIO, where: str | None = None) -> np.ndarray:
    """(H, W) int64 raw ids from a greyscale (8/16-bit) or palette PNG; RGB colour masks are refused.

    path: a file path or an open binary file (e.g. uploaded bytes in a BytesIO); ``where`` names it in errors
    (default: the path)."""
    p = where if where is not None else path if isinstance(path, (str, Path)) else "label map"
    try:
        with Image.open(Path(path) if isinstance(path, str) else path) as img:
            img.load()
            mode = img.mode
            if mode in ("RGB", "RGBA"):
                arr = np.asarray(img)
                if not (arr[..., 0] == arr[..., 1]).all() or not (arr[..., 1] == arr[..., 2]).all():
                    raise DataError(f"label map {p} is a colour ({mode}) image; gensynth expects one id per pixel "
                                    f"(greyscale or palette PNG of the dataset's raw ids), not a colourised mask")
                return arr[..., 0].astype(np.int64)
            return np.asarray(img).astype(np.int64)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read label map {p}: {exc}") from exc


def raw_to_model_ids(raw: np.ndarray, spec: DatasetSpec, where: str) -> np.ndarray:
    """Map raw ids through ``spec.raw_to_class``; DataError naming ``where`` for ids the dataset does not define."""
    table = np.asarray(spec.raw_to_class, dtype=np.int64)
    bad = np.unique(raw[(raw < 0) | (raw >= len(table))])
    inside = raw[(raw >= 0) & (raw < len(table))]
    bad = np.union1d(bad, np.unique(inside[table[inside] < 0]))
    if bad.size:
        valid = sorted(spec.valid_raw_ids)
        shown = ", ".join(str(int(b)) for b in bad[:10]) + (" ..." if bad.size > 10 else "")
        allowed = f"{valid[0]}..{valid[-1]}" if valid == list(range(valid[0], valid[-1] + 1)) else \
            ", ".join(map(str, valid[:30])) + (" ..." if len(valid) > 30 else "")
        raise DataError(f"label map {where} contains ids {shown} that dataset {spec.name!r} does not define "
                        f"(valid raw ids: {allowed}); the model has {spec.num_classes} classes")
    return table[raw]


def check_size(ids: np.ndarray | Tensor, expected: tuple[int, int], multiple: int, where: str) -> None:
    """Accept the training size or any size whose sides are multiples of ``multiple``; else DataError."""
    h, w = ids.shape[-2:]
    if (h, w) == tuple(expected):
        return
    if h % multiple or w % multiple:
        raise DataError(f"label map {where} is {h}x{w} (HxW); this model was trained at {expected[0]}x{expected[1]} "
                        f"and needs sides that are multiples of {multiple}: resize it (nearest) to "
                        f"{expected[0]}x{expected[1]}")


def read_label_map(path: str | Path, spec: DatasetSpec, expected: tuple[int, int], multiple: int = 1) -> Tensor:
    """One label PNG -> (H, W) int64 model class ids, validated."""
    raw = read_id_png(path)
    ids = raw_to_model_ids(raw, spec, str(path))
    check_size(ids, expected, multiple, str(path))
    return torch.from_numpy(ids)


def check_model_ids(ids: Tensor, num_classes: int, where: str = "labels") -> None:
    """DataError when (…, H, W) model ids fall outside 0..num_classes-1."""
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
        bad = sorted(set(torch.unique(ids[(ids < 0) | (ids >= num_classes)]).tolist()))
        raise DataError(f"{where} contain class ids {bad[:10]} outside the model's classes 0..{num_classes - 1}")
