"""``folder``: any ``images/`` + ``labels/`` pair with equal file stems and a classes file.

Layout: ``ROOT/images[/SPLIT]/*.jpg|png``, ``ROOT/labels[/SPLIT]/*.png``, ``ROOT/classes.json`` (or
``classes.yaml``); without split folders the same samples serve every split, with a warning
(docs/datasets.md has the full description and a worked example)::

    {"dontcare": 0, "classes": [{"id": 0, "name": "unlabelled", "color": [0, 0, 0]}, ...]}

``id`` is the value in the label files; model classes are the entries in file order. Label files may
be id PNGs (8/16-bit), palette PNGs (the palette index is the id) or RGB colour masks (mapped through
the colours; an unknown colour is an error naming the file and the colour).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from gensynth.errors import ConfigError, DataError
from gensynth.interfaces import ClassInfo
from gensynth_datasets.paired import PairedSpec, pair_by_key

CLASSES_FILES = ("classes.json", "classes.yaml", "classes.yml")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def load_classes_file(path: Path) -> tuple[list[tuple[int, str, tuple[int, int, int] | None]], int | None]:
    """[(raw id, name, colour or None)] and the raw don't-care id from a JSON/YAML classes file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(f"{path}: unreadable classes file ({exc})") from None
    return parse_classes(text, str(path), json_format=path.suffix == ".json")


def parse_classes(text: str, where: str, json_format: bool = True):
    """The classes document (JSON or YAML text) -> ([(raw id, name, colour or None)], raw don't-care id)."""
    path = where
    try:
        doc = json.loads(text) if json_format else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: unreadable classes file ({exc})") from None
    entries = doc.get("classes") if isinstance(doc, dict) else doc
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path}: expected a list of classes (or {{'classes': [...]}}) with id, name and color")
    out, seen = [], set()
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "id" not in e or "name" not in e:
            raise DataError(f"{path}: class entry {i} must have 'id' and 'name' (and optionally 'color'), got {e!r}")
        rid = e["id"]
        if not isinstance(rid, int) or not 0 <= rid <= 65535 or rid in seen:
            raise DataError(f"{path}: class entry {i} has id {rid!r}; ids must be unique integers in 0..65535")
        seen.add(rid)
        color = e.get("color")
        if color is not None and (not isinstance(color, (list, tuple)) or len(color) != 3
                                  or not all(isinstance(c, int) and 0 <= c <= 255 for c in color)):
            raise DataError(f"{path}: class {e['name']!r} has color {color!r}; expected [r, g, b] in 0..255")
        out.append((rid, str(e["name"]), tuple(color) if color is not None else None))
    dontcare = doc.get("dontcare") if isinstance(doc, dict) else None
    if dontcare is not None and dontcare not in seen:
        raise DataError(f"{path}: dontcare {dontcare!r} is not one of the class ids")
    return out, dontcare


class FlatLayoutWarning(UserWarning):
    """A folder dataset without split folders: the same samples serve every split."""


def _warn_flat(root: Path, split: str) -> None:
    import warnings

    warnings.warn(f"folder dataset {root} has no split folders (images/train, images/val): the same samples serve "
                  f"as the {split} split and every other, so evaluation measures the training images. Split "
                  f"explicitly: move the validation images to {root / 'images' / 'val'} and their labels to "
                  f"{root / 'labels' / 'val'}, the rest to images/train and labels/train (docs/datasets.md)",
                  FlatLayoutWarning, stacklevel=2)


class FolderSpec(PairedSpec):
    """A user dataset: images/ + labels/ (id PNG, palette PNG or RGB colour mask) + classes.json|yaml."""

    name = "folder"
    default_size = (256, 256)
    has_instances = False

    def __init__(self, root: str | Path | None = None):
        self.root = None if root is None else Path(root).expanduser()
        self._entries: list | None = None
        self._dontcare_raw: int | None = None
        if self.root is not None:
            path = next((self.root / n for n in CLASSES_FILES if (self.root / n).exists()), None)
            if path is None:
                raise DataError(f"{self.root}: no classes file (expected one of {', '.join(CLASSES_FILES)})")
            self._entries, self._dontcare_raw = load_classes_file(path)

    @classmethod
    def for_root(cls, root: str | Path) -> "FolderSpec":
        """The spec configured from ROOT's classes file (the registered instance has no classes yet)."""
        return cls(root)

    @classmethod
    def from_classes_text(cls, text: str, where: str) -> "FolderSpec":
        """The spec configured from a classes document (e.g. the ``classes.json`` written beside the shards)."""
        spec = cls()
        spec._entries, spec._dontcare_raw = parse_classes(text, where)
        return spec

    def classes_text(self) -> str:
        """This spec's classes document as JSON: written beside converted shards so they carry their classes."""
        return json.dumps({"dontcare": self._dontcare_raw,
                           "classes": [{"id": r, "name": n, "color": list(c) if c else None}
                                       for r, n, c in self._need()]}, indent=1)

    def _need(self):
        if self._entries is None:
            raise ConfigError("dataset 'folder' reads its classes from data.root: --data-root DIR with images/, "
                              "labels/ and classes.json, or its converted shards with their classes.json")
        return self._entries

    @property
    def classes(self):
        return [ClassInfo(i, n, c or (0, 0, 0)) for i, (_, n, c) in enumerate(self._need())]

    @property
    def dontcare(self):
        if self._entries is None or self._dontcare_raw is None:
            return None
        return [r for r, _, _ in self._entries].index(self._dontcare_raw)

    @property
    def raw_to_class(self):
        entries = self._need()
        table = np.full(max(r for r, _, _ in entries) + 1, -1, dtype=np.int64)
        for i, (r, _, _) in enumerate(entries):
            table[r] = i
        return table

    def list_raw(self, root, split):
        root = Path(root)
        img_dir = self.need_dir(root / "images", "images")
        lab_dir = self.need_dir(root / "labels", "labels")
        split_dirs = sorted(p.name for p in img_dir.iterdir() if p.is_dir())
        if (img_dir / split).is_dir():
            img_dir, lab_dir = img_dir / split, self.need_dir(lab_dir / split, f"labels/{split}")
        elif split_dirs:
            raise DataError(f"{img_dir}: no {split}/ folder (split folders here: {', '.join(split_dirs)}); put the "
                            f"{split} images in {img_dir / split} and their labels in {lab_dir / split}")
        else:
            _warn_flat(root, split)
        images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        labels = {p.stem: p for p in sorted(lab_dir.glob("*.png"))}
        return pair_by_key(images, labels)

    def load_raw(self, root, split, item):
        if self._entries is None:
            return FolderSpec(root).load_raw(root, split, item)
        return super().load_raw(root, split, item)

    def label_colours(self) -> dict[tuple[int, int, int], int]:
        """The classes file's colours (classes without one take no part in colour masks)."""
        out: dict[tuple[int, int, int], int] = {}
        for raw, _, colour in self._need():
            if colour is not None and tuple(colour) not in out:
                out[tuple(colour)] = raw
        return out
