"""Cityscapes (gtFine): 35 model classes as OASIS uses them (labelIds 0..33 = class id, class 34 unused,
0 'unlabeled' = don't-care), 256x512 (H, W), instance maps, evaluation on the 19 trainIds."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gensynth.interfaces import ClassInfo
from gensynth_datasets.paired import PairedSpec, pair_by_key
from gensynth_datasets.tables import CITYSCAPES


class CityscapesSpec(PairedSpec):
    """Cityscapes: leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine/<split>/<city>/*_gtFine_labelIds.png."""

    name = "cityscapes"
    classes = [ClassInfo(i, n, c) for n, i, _, c in CITYSCAPES]
    dontcare = 0
    default_size = (256, 512)
    has_instances = True
    splits = ("train", "val", "test")
    label_file_pattern = "*_gtFine_labelIds.png"  # not *_instanceIds.png nor *_color.png beside them

    @property
    def raw_to_class(self):
        return np.arange(34, dtype=np.int64)  # raw labelIds 0..33 -> same class; class 34 never set

    @property
    def eval_ids(self):
        return np.array([t for _, _, t, _ in CITYSCAPES], dtype=np.int64)  # model class -> trainId (255 ignored)

    def default_options(self):
        return {"data.size": [256, 512]}

    def list_raw(self, root, split):
        root = Path(root)
        img_dir = self.need_dir(root / "leftImg8bit" / split, "leftImg8bit/" + split)
        gt_dir = self.need_dir(root / "gtFine" / split, "gtFine/" + split)
        images = {p.name[: -len("_leftImg8bit.png")]: p for p in img_dir.glob("*/*_leftImg8bit.png")}
        labels = {p.name[: -len("_gtFine_labelIds.png")]: p for p in gt_dir.glob("*/*_gtFine_labelIds.png")}
        insts = {p.name[: -len("_gtFine_instanceIds.png")]: p for p in gt_dir.glob("*/*_gtFine_instanceIds.png")}
        return pair_by_key(images, labels, insts)
