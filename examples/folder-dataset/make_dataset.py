"""Write a small dataset in gensynth's ``folder`` layout, to try the layout end to end (docs/datasets.md).

    python examples/folder-dataset/make_dataset.py my-data [--train 24] [--val 8] [--size 64]

It writes, under my-data/:
    classes.yaml                 ids, names and colours of 4 classes (sky, grass, sun, unlabelled = don't care)
    images/train/*.jpg           photos (here: painted scenes with noise)
    labels/train/*.png           their label maps: id PNGs for even samples, RGB colour masks for odd ones
    images/val/*.jpg, labels/val/*.png
Both label formats are accepted in one dataset; the colour masks use the colours of classes.yaml exactly.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = [  # (id in the label files, name, colour)
    (0, "unlabelled", (0, 0, 0)),
    (1, "sky", (70, 130, 180)),
    (2, "grass", (107, 142, 35)),
    (3, "sun", (250, 170, 30)),
]


def scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(label ids (H, W) uint8, photo (H, W, 3) uint8) of a random landscape."""
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w]
    horizon = int(h * rng.uniform(0.4, 0.7)) + (np.sin(xx[0] / w * rng.uniform(2, 6)) * h * 0.05).astype(int)
    ids = np.where(yy < horizon[None, :], 1, 2).astype(np.uint8)
    cy, cx, r = rng.uniform(0.1, 0.3) * h, rng.uniform(0.2, 0.8) * w, rng.uniform(0.06, 0.12) * h
    ids[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 3
    ids[:2, :2] = 0  # a few unlabelled pixels
    photo = np.zeros((h, w, 3), np.float32)
    photo[ids == 1] = (110, 160, 230)
    photo[ids == 2] = (60, 140, 50)
    photo[ids == 3] = (255, 220, 90)
    photo += (yy / h * 40)[..., None] * (ids == 1)[..., None]  # a sky gradient
    photo += rng.normal(0, 12, photo.shape) * (ids == 2)[..., None]  # grass texture
    return ids, np.clip(photo, 0, 255).astype(np.uint8)


def write(root: Path, n_train: int, n_val: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    lines = ["dontcare: 0", "classes:"]
    lines += [f"  - {{id: {i}, name: {n}, color: [{c[0]}, {c[1]}, {c[2]}]}}" for i, n, c in CLASSES]
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text("\n".join(lines) + "\n")
    palette = np.array([c for _, _, c in CLASSES], np.uint8)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            ids, photo = scene(rng, size)
            Image.fromarray(photo).save(root / "images" / split / f"{split}_{k:04d}.jpg", quality=95)
            label = ids if k % 2 == 0 else palette[ids]  # id PNG or colour mask
            Image.fromarray(label).save(root / "labels" / split / f"{split}_{k:04d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--train", type=int, default=24)
    ap.add_argument("--val", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    write(args.root, args.train, args.val, args.size)
    print(f"wrote {args.train} train and {args.val} val samples to {args.root}")


if __name__ == "__main__":
    main()
