"""Reading user label maps for generation: label files of a dataset -> model class ids.

A label file is read by the dataset's own reader (:meth:`DatasetSpec.read_label_file`, the one training uses):
raw (official) ids, one per pixel (8- or 16-bit greyscale or palette PNG), or an RGB colour mask in the dataset's
class colours; raw ids are mapped through the spec's ``raw_to_class`` table. A folder is searched with the
dataset's naming rule (``label_file_pattern``). Wrong ids and wrong sizes raise DataError naming the file, the
offending values and what is allowed.
"""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

from gensynth.errors import DataError
from gensynth.interfaces import DatasetSpec

def list_label_files(path: str | Path, spec: DatasetSpec | None = None) -> list[Path]:
    """A label file -> [it]; a folder -> its files that follow the dataset's naming rule (sorted; sub-folders are
    searched when the folder itself has none). DataError when there are none."""
    from gensynth.data.label_files import find_label_files

    return find_label_files(path, getattr(spec, "label_file_pattern", "*.png") if spec is not None else "*.png")


def read_id_png(path: str | Path | BinaryIO, spec: DatasetSpec | None = None, where: str | None = None) -> np.ndarray:
    """(H, W) int64 raw ids of one label file, read as the dataset reads it (an id PNG, or a colour mask in its class
    colours; :mod:`gensynth.data.label_files`).

    path: a file path or an open binary file (e.g. uploaded bytes in a BytesIO); ``where`` names it in errors
    (default: the path)."""
    from gensynth.data.label_files import read_label_png

    if spec is not None and isinstance(path, (str, Path)) and where is None:
        return spec.read_label_file(str(path))
    colours = spec.label_colours() if spec is not None else None
    dataset = f"dataset {spec.name!r}" if spec is not None else "this dataset"
    return read_label_png(path, colours, dataset=dataset, where=where)


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
                        f"{expected[0]}x{expected[1]}, or let gensynth do it (drop --native-size)")


def read_label_map(path: str | Path, spec: DatasetSpec, expected: tuple[int, int], multiple: int = 1,
                   fit: str = "resize") -> Tensor:
    """One label file -> (H, W) int64 model class ids, validated.

    fit: ``"resize"`` (default): a map of another size is resized (nearest, as training resizes its labels) to the
    model's training size ``expected``; ``"keep"``: it keeps its own size, which must have sides that are
    multiples of ``multiple``."""
    raw = read_id_png(path, spec)
    if fit == "resize" and tuple(raw.shape[-2:]) != tuple(expected):
        from gensynth.data.shards import nearest_resize

        raw = nearest_resize(raw, tuple(expected))
    ids = raw_to_model_ids(raw, spec, str(path))
    check_size(ids, expected, multiple, str(path))
    return torch.from_numpy(np.ascontiguousarray(ids))


def check_model_ids(ids: Tensor, num_classes: int, where: str = "labels") -> None:
    """DataError when (…, H, W) model ids fall outside 0..num_classes-1."""
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
        bad = sorted(set(torch.unique(ids[(ids < 0) | (ids >= num_classes)]).tolist()))
        raise DataError(f"{where} contain class ids {bad[:10]} outside the model's classes 0..{num_classes - 1}")
