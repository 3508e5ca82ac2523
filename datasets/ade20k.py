"""ADE20K (SceneParsing ADEChallengeData2016): 151 model classes (0 'other' = don't-care, 1..150 from
objectInfo150), 256x256. ``ade20k-outdoors``: an outdoor subset.

There is no official ADE20K-outdoor list: the OASIS authors describe (issue #23) filtering ADE20K by
outdoor-indicative classes. gensynth's filter keeps an image when at least ``OUTDOOR_MIN_FRACTION`` of its
pixels are sky, and it shows no ceiling or floor; results on this subset are not strictly comparable.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gensynth.errors import DataError
from gensynth.interfaces import ClassInfo
from gensynth_datasets.paired import PairedSpec, pair_by_key, read_id_map
from gensynth_datasets.tables import ADE20K_NAMES, palette

_SPLIT_DIRS = {"train": "training", "val": "validation"}
SKY, CEILING, FLOOR = 3, 6, 4
OUTDOOR_MIN_FRACTION = 0.05


def _dataset_root(root: Path) -> Path:
    return root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root


class ADE20KSpec(PairedSpec):
    """ADE20K: images/{training,validation}/*.jpg + annotations/{training,validation}/*.png."""

    name = "ade20k"
    classes = [ClassInfo(i, n, c) for i, (n, c) in enumerate(zip(["other"] + ADE20K_NAMES, palette(151)))]
    dontcare = 0
    default_size = (256, 256)
    has_instances = False

    @property
    def raw_to_class(self):
        return np.arange(151, dtype=np.int64)

    def default_options(self):
        return {"data.size": [256, 256]}

    def list_raw(self, root, split):
        if split not in _SPLIT_DIRS:
            raise DataError(f"{self.name}: unknown split {split!r}; available: {', '.join(_SPLIT_DIRS)}")
        base = _dataset_root(Path(root))
        img_dir = self.need_dir(base / "images" / _SPLIT_DIRS[split], f"images/{_SPLIT_DIRS[split]}")
        ann_dir = self.need_dir(base / "annotations" / _SPLIT_DIRS[split], f"annotations/{_SPLIT_DIRS[split]}")
        images = {p.stem: p for p in img_dir.glob("*.jpg")}
        labels = {p.stem: p for p in ann_dir.glob("*.png")}
        return pair_by_key(images, labels)


def is_outdoor(label: np.ndarray) -> bool:
    """The class-based outdoor filter (see the module docstring)."""
    counts = np.bincount(label.ravel(), minlength=151)
    return counts[SKY] >= OUTDOOR_MIN_FRACTION * label.size and counts[CEILING] == 0 and counts[FLOOR] == 0


class ADE20KOutdoorsSpec(ADE20KSpec):
    """ADE20K outdoor subset selected by a class-based filter (no official list exists)."""

    name = "ade20k-outdoors"

    def list_raw(self, root, split):
        items = super().list_raw(root, split)
        return [it for it in items if it.label is None or it.image is None or is_outdoor(read_id_map(it.label))]
