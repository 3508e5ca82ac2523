"""Label files as users and datasets store them -> raw ids: one reader for training, generation and the paint app.

A label PNG is read the same way wherever it is used:

- a single-channel PNG (8/16-bit greyscale, or a palette PNG whose index is the id) holds raw ids;
- an RGB(A) PNG is a colour mask when the dataset defines class colours and every colour in it is one of them
  (a colour shared by several classes maps to the first of them, e.g. Cityscapes' black to ``unlabeled``);
  otherwise an RGB PNG whose three channels are equal holds ids (a greyscale map saved as RGB);
  any other colour is an error naming the file, the colour and a pixel where it occurs.

Which files in a folder are label files is the dataset's naming rule (:attr:`DatasetSpec.label_file_pattern`,
e.g. Cityscapes' ``*_gtFine_labelIds.png``, so that ``*_instanceIds.png`` and ``*_color.png`` beside them are
not read as label maps).
"""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Mapping

import numpy as np
from PIL import Image, UnidentifiedImageError

from gensynth.errors import DataError

ID_MODES = ("L", "P", "I;16", "I;16B", "I;16L", "I", "1")


def rgb_code(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours -> (...) int64 codes ``r << 16 | g << 8 | b``."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _colour(code: int) -> tuple[int, int, int]:
    return (code >> 16) & 255, (code >> 8) & 255, code & 255


def colours_to_ids(rgb: np.ndarray, colours: Mapping[tuple[int, int, int], int]) -> np.ndarray | int:
    """(H, W, 3) colour mask -> (H, W) raw ids, or the code of the first colour not in ``colours``."""
    codes = rgb_code(rgb)
    lut = {(c[0] << 16) | (c[1] << 8) | c[2]: rid for c, rid in colours.items()}
    present = np.unique(codes)
    missing = [int(c) for c in present if int(c) not in lut]
    if missing:
        return missing[0]
    keys = np.array(sorted(lut), dtype=np.int64)
    values = np.array([lut[int(k)] for k in keys], dtype=np.int64)
    return values[np.searchsorted(keys, codes)]


def read_label_png(path: str | Path | BinaryIO, colours: Mapping[tuple[int, int, int], int] | None = None,
                   dataset: str = "this dataset", where: str | None = None) -> np.ndarray:
    """(H, W) int64 raw ids of one label file (rules in the module docstring); DataError naming the file.

    path: a file path or an open binary file (uploaded bytes); ``where`` names it in errors (default: the path)."""
    p = where if where is not None else Path(path) if isinstance(path, (str, Path)) else "label map"
    try:
        with Image.open(Path(path) if isinstance(path, str) else path) as img:
            img.load()
            mode = img.mode
            if mode in ID_MODES:
                return np.asarray(img).astype(np.int64)
            if mode not in ("RGB", "RGBA", "LA"):
                raise DataError(f"label map {p}: unsupported PNG mode {mode}; expected an id PNG (greyscale or "
                                f"palette) or an RGB colour mask")
            rgb = np.asarray(img.convert("RGB"))
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"cannot read label map {p}: not an image file (expected a PNG)") from None
    except Exception as exc:
        raise DataError(f"cannot read label map {p}: {type(exc).__name__}: {exc}") from None
    if colours:
        ids = colours_to_ids(rgb, colours)
        if not isinstance(ids, (int, np.integer)):
            return ids
        unknown = int(ids)
    else:
        unknown = None
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return rgb[..., 0].astype(np.int64)
    if unknown is None:
        raise DataError(f"label map {p} is a colour ({mode}) image, and {dataset} defines no class colours; gensynth "
                        f"expects one id per pixel (greyscale or palette PNG of the dataset's raw ids)")
    ys, xs = np.nonzero(rgb_code(rgb) == unknown)
    raise DataError(f"label map {p}: colour {_colour(unknown)} at pixel (x={int(xs[0])}, y={int(ys[0])}) is not a "
                    f"class colour of {dataset} (a colour mask must use the classes' colours exactly: "
                    f"gensynth datasets classes NAME lists them)")


def find_label_files(path: str | Path, pattern: str = "*.png") -> list[Path]:
    """A file -> [it]; a folder -> the files matching the dataset's ``pattern`` in it, or (when there are none at
    its top level) in its sub-folders, sorted. DataError naming the folder and the pattern when there are none."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.glob(pattern) if f.is_file())
        if not files:
            files = sorted(f for f in p.rglob(pattern) if f.is_file())
        if not files:
            others = sorted(f.name for f in p.rglob("*.png"))[:3]
            hint = f" (it has other PNG files, e.g. {', '.join(others)})" if others else ""
            raise DataError(f"label folder {p} holds no label maps named {pattern}{hint}")
        return files
    raise DataError(f"label path {p} does not exist (expected a label PNG, a folder of them, or shards)")


def model_to_raw_table(spec) -> np.ndarray:
    """(num_classes,) int64: each model class's first raw id (what a label file stores for it); -1 for a class no
    raw id maps to."""
    table = np.asarray(spec.raw_to_class, dtype=np.int64)
    out = np.full(spec.num_classes, -1, dtype=np.int64)
    for raw in range(len(table) - 1, -1, -1):
        if table[raw] >= 0:
            out[table[raw]] = raw
    return out


def write_label_png(path: str | Path, class_ids: np.ndarray, spec, *, colour: bool = False) -> None:
    """Write (H, W) model class ids as a label file the dataset's reader reads back to the same ids: the raw ids
    as an 8-bit (or 16-bit, above 255) greyscale PNG, or with ``colour`` an RGB mask in the class colours
    (DataError when two of the classes present share a colour, which a colour mask cannot tell apart)."""
    ids = np.asarray(class_ids, dtype=np.int64)
    if colour:
        palette = np.array([c.color for c in spec.classes], dtype=np.uint8)
        present = [int(c) for c in np.unique(ids)]
        seen: dict[tuple, int] = {}
        for c in present:
            key = tuple(int(v) for v in palette[c])
            if key in seen:
                raise DataError(f"cannot write {path} as a colour mask: classes {spec.classes[seen[key]].name!r} "
                                f"and {spec.classes[c].name!r} share the colour {key}; write id PNGs instead")
            seen[key] = c
        Image.fromarray(palette[ids]).save(path)
        return
    raw = model_to_raw_table(spec)[ids]
    if (raw < 0).any():
        bad = sorted({int(c) for c in np.unique(ids[raw < 0])})
        raise DataError(f"cannot write {path}: model classes {bad} have no raw id in dataset {spec.name!r}")
    if raw.max(initial=0) > 255:
        Image.fromarray(raw.astype(np.uint16)).save(path)
    else:
        Image.fromarray(raw.astype(np.uint8)).save(path)
