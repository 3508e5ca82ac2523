"""An example dataset: a tiny layout of shapes, with a few samples shipped inside the package.

Layout: ``ROOT/<split>/<name>.png`` (RGB image) and ``ROOT/<split>/<name>_label.png`` (8-bit raw ids:
0 = unlabelled, 10 = square, 20 = disc).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from gensynth.errors import DataError
from gensynth.interfaces import ClassInfo, DatasetSpec, RawSample


class ShapesSpec(DatasetSpec):
    """Squares and discs on a background: 3 classes, 32x32."""

    name = "example-shapes"
    classes = [ClassInfo(0, "unlabelled", (0, 0, 0)), ClassInfo(1, "square", (220, 60, 60)),
               ClassInfo(2, "disc", (60, 60, 220))]
    dontcare = 0  # class 0 means "unlabelled"
    default_size = (32, 32)  # (H, W)
    splits = ("train", "val")

    @property
    def raw_to_class(self) -> np.ndarray:
        table = np.full(21, -1, dtype=np.int64)  # raw ids not in the table are invalid
        table[[0, 10, 20]] = [0, 1, 2]
        return table

    def default_options(self) -> dict:
        return {"data.size": [32, 32]}

    def iter_raw(self, root: str, split: str) -> Iterator[RawSample]:
        folder = Path(root) / split
        if not folder.is_dir():
            raise DataError(f"{folder}: missing split directory (example-shapes has {', '.join(self.splits)})")
        for image in sorted(folder.glob("*.png")):
            if image.stem.endswith("_label"):
                continue
            label = image.with_name(f"{image.stem}_label.png")
            if not label.exists():
                raise DataError(f"{image}: its label file {label.name} is missing")
            yield RawSample(key=image.stem, image_bytes=image.read_bytes(), image_ext="png",
                            label=np.asarray(Image.open(label), dtype=np.int64),
                            source=str(image.relative_to(root)), label_source=str(label.relative_to(root)))

    def example_root(self) -> str:
        """The samples shipped in the package (gensynth plugins check reads them)."""
        return str(resources.files("gensynth_example") / "data")
