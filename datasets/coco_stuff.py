"""COCO-Stuff 164k: raw stuffthingmaps ids k (0..181, 0 = person) -> model class k + 1, 255 (unlabelled)
-> don't-care class 0; 183 model classes; 256x256. Instance maps are not in the official download
(SPADE generated them): they are used when ``instance_maps/`` or ``spade_instance_maps/`` is present."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gensynth.errors import DataError
from gensynth.interfaces import ClassInfo
from gensynth_datasets.paired import PairedSpec, pair_by_key
from gensynth_datasets.tables import COCO_STUFF_NAMES, palette

INSTANCE_DIRS = ("instance_maps", "spade_instance_maps")


class CocoStuffSpec(PairedSpec):
    """COCO-Stuff: {train,val}2017/*.jpg + stuffthingmaps_trainval2017/{train,val}2017/*.png."""

    name = "coco-stuff"
    classes = [ClassInfo(i, n, c) for i, (n, c) in enumerate(zip(["unlabeled"] + COCO_STUFF_NAMES, palette(183)))]
    dontcare = 0
    default_size = (256, 256)
    has_instances = False

    @property
    def raw_to_class(self):
        table = np.full(256, -1, dtype=np.int64)
        table[:182] = np.arange(1, 183)
        table[255] = 0
        return table

    def default_options(self):
        return {"data.size": [256, 256]}

    def list_raw(self, root, split):
        if split not in ("train", "val"):
            raise DataError(f"{self.name}: unknown split {split!r}; available: train, val")
        root = Path(root)
        sub = f"{split}2017"
        img_dir = self.need_dir(root / sub, sub)
        lab_dir = self.need_dir(root / "stuffthingmaps_trainval2017" / sub, f"stuffthingmaps_trainval2017/{sub}")
        images = {p.stem: p for p in img_dir.glob("*.jpg")}
        labels = {p.stem: p for p in lab_dir.glob("*.png")}
        insts = {}
        for d in INSTANCE_DIRS:
            if (root / d / sub).is_dir():
                insts = {p.stem: p for p in (root / d / sub).glob("*.png")}
                break
        return pair_by_key(images, labels, insts)
