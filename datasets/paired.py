"""Shared reader for official layouts made of paired image / label (/ instance) files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from gensynth.errors import DataError
from gensynth.interfaces import DatasetSpec, RawSample


@dataclass(frozen=True)
class PairItem:
    """One work item: key, image path, label path, instance path (any may be None when missing)."""

    key: str
    image: str | None
    label: str | None
    instance: str | None = None


def read_id_map(path: str | Path, what: str = "label") -> np.ndarray:
    """(H, W) int64 ids of a single-channel PNG (L, P, I;16, I); DataError naming the file otherwise."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I", "1"):
                raise DataError(f"{path}: {what} map must be a single-channel id PNG, got mode {img.mode}")
            return np.asarray(img).astype(np.int64)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: unreadable {what} map ({type(exc).__name__}: {exc})") from None


def pair_by_key(images: dict[str, Path], labels: dict[str, Path], instances: dict[str, Path] | None = None
                ) -> list[PairItem]:
    """Items for the union of keys (sorted), so that a missing partner becomes an error at load time."""
    instances = instances or {}
    return [PairItem(k, str(images[k]) if k in images else None, str(labels[k]) if k in labels else None,
                     str(instances[k]) if k in instances else None)
            for k in sorted(set(images) | set(labels))]


class PairedSpec(DatasetSpec):
    """A spec whose ``list_raw`` returns :class:`PairItem` objects; ``load_raw`` reads one of them."""

    def _root_rel(self, root: str, path: str) -> str:
        try:
            return str(Path(path).relative_to(root))
        except ValueError:
            return path

    def load_raw(self, root: str, split: str, item: PairItem) -> RawSample | None:
        if item.image is None:
            raise DataError(f"{item.label}: label file has no partner image for key {item.key!r}")
        if item.label is None:
            raise DataError(f"{item.image}: image has no partner label file for key {item.key!r}")
        try:
            image_bytes = Path(item.image).read_bytes()
        except OSError as exc:
            raise DataError(f"{item.image}: unreadable image ({exc.strerror})") from None
        try:
            label = self.read_label(item.label)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{item.label}: unreadable label map ({type(exc).__name__}: {exc})") from None
        inst = read_id_map(item.instance, "instance") if item.instance else None
        ext = Path(item.image).suffix.lower().lstrip(".")
        return RawSample(key=item.key, image_bytes=image_bytes, image_ext="jpg" if ext == "jpeg" else ext,
                         label=label, instance=inst, source=item.image, label_source=item.label)

    def read_label(self, path: str) -> np.ndarray:
        """(H, W) raw ids of a label file: the core's one reader (id PNG, or a colour mask in the class colours)."""
        return self.read_label_file(path)

    def iter_raw(self, root: str, split: str) -> Iterator[RawSample]:
        for item in self.list_raw(root, split):
            raw = self.load_raw(root, split, item)
            if raw is not None:
                yield raw

    @staticmethod
    def need_dir(path: Path, what: str) -> Path:
        if not path.is_dir():
            raise DataError(f"{path}: missing {what} directory of the official layout")
        return path
