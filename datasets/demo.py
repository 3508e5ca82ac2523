"""``demo``: a procedural outdoor-scene dataset, deterministic from a seed, with no download.

Every class has its own colour AND texture (gradients, waves, bricks, speckle, blobs), and every
scene has its own layout (horizon line, mountain ridge, lake/beach bands, a road towards the
vanishing point, buildings, trees, rocks, clouds), so that a model's progress is measurable.
Model class 0 is the don't-care class (a rare small patch of grey noise). Raw ids = model ids.

The demo has no on-disk layout: ``iter_raw(None, split)`` generates the samples, and the loader
materialises them once as shards in the cache, so the demo is read by the same shard loader.
"""
from __future__ import annotations

import io
from typing import Iterator

import numpy as np
from PIL import Image

from gensynth.errors import DataError
from gensynth.interfaces import ClassInfo, DatasetSpec, RawSample

DEMO_CLASSES = [
    ("unlabelled", (0, 0, 0)),
    ("sky", (70, 130, 180)),
    ("cloud", (230, 230, 240)),
    ("mountain", (120, 100, 90)),
    ("water", (30, 80, 160)),
    ("grass", (60, 160, 50)),
    ("sand", (220, 200, 130)),
    ("road", (128, 64, 128)),
    ("building", (180, 80, 50)),
    ("tree", (20, 90, 20)),
    ("rock", (150, 150, 150)),
]
UNLABELLED, SKY, CLOUD, MOUNTAIN, WATER, GRASS, SAND, ROAD, BUILDING, TREE, ROCK = range(len(DEMO_CLASSES))
VAL_SAMPLES = 64
_SPLIT_CODE = {"train": 0, "val": 1}


# ---------------------------------------------------------------------------------------------
# small numpy helpers
# ---------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int]) -> np.ndarray:
    """(h, w) float noise in [-1, 1], bilinearly upsampled from a (cells) random grid."""
    gy, gx = max(cells[0], 1) + 1, max(cells[1], 1) + 1
    grid = rng.uniform(-1, 1, size=(gy, gx))
    ys = np.linspace(0, gy - 1, h)
    xs = np.linspace(0, gx - 1, w)
    y0 = np.clip(np.floor(ys).astype(int), 0, gy - 2)
    x0 = np.clip(np.floor(xs).astype(int), 0, gx - 2)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _rgb(base, jitter: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(base, dtype=np.float64) + jitter, 0, 1)


# ---------------------------------------------------------------------------------------------
# per-class textures: each returns (H, W, 3) float in [0, 1]
# ---------------------------------------------------------------------------------------------
def _texture(cls: int, rng: np.random.Generator, h: int, w: int, horizon: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    s = min(h, w) / 64.0  # texture scale follows the resolution
    jit = rng.uniform(-0.05, 0.05, size=3)
    fine = rng.normal(0, 1, size=(h, w))
    if cls == SKY:
        t = np.clip(yy / max(horizon, 1.0), 0, 1)[..., None]
        top, bottom = _rgb((0.20, 0.40, 0.85), jit), _rgb((0.65, 0.80, 0.95), jit)
        return top * (1 - t) + bottom * t + 0.02 * _smooth_noise(rng, h, w, (3, 5))[..., None]
    if cls == CLOUD:
        n = _smooth_noise(rng, h, w, (int(6 * s) + 2, int(10 * s) + 2))
        return _rgb((0.93, 0.93, 0.96), jit) - 0.10 * np.abs(n)[..., None]
    if cls == MOUNTAIN:
        stripes = np.sin((xx + 1.5 * yy) / (2.0 * s))
        n = _smooth_noise(rng, h, w, (int(8 * s) + 2, int(8 * s) + 2))
        return _rgb((0.45, 0.40, 0.37), jit) + (0.07 * stripes + 0.08 * n)[..., None]
    if cls == WATER:
        waves = np.sin(yy / (0.9 * s) + 2.0 * np.sin(xx / (5.0 * s) + rng.uniform(0, 6)))
        return _rgb((0.10, 0.30, 0.55), jit) + (0.10 * waves)[..., None] * np.array([0.6, 0.8, 1.0])
    if cls == GRASS:
        streaks = _smooth_noise(rng, h, w, (int(4 * s) + 2, int(40 * s) + 2))
        return _rgb((0.22, 0.55, 0.16), jit) + (0.10 * streaks + 0.06 * fine)[..., None]
    if cls == SAND:
        return _rgb((0.85, 0.76, 0.52), jit) + (0.04 * fine)[..., None] + \
            0.04 * _smooth_noise(rng, h, w, (4, 6))[..., None]
    if cls == ROAD:
        img = _rgb((0.33, 0.33, 0.35), jit) + (0.04 * fine)[..., None]
        centre = w / 2 + rng.uniform(-0.05, 0.05) * w
        dashes = (np.abs(xx - centre) < max(1.0, 0.8 * s)) & ((yy // max(1, int(4 * s))) % 2 == 0)
        img[dashes] = (0.95, 0.90, 0.40)
        return img
    if cls == BUILDING:
        bh, bw = max(2, int(3 * s)), max(4, int(6 * s))
        row = (yy // bh).astype(int)
        mortar = (yy % bh < 1) | (((xx + (row % 2) * bw / 2) % bw) < 1)
        base = _rgb((0.62, 0.30, 0.20) if rng.random() < 0.6 else (0.75, 0.70, 0.60), jit)
        img = np.broadcast_to(base, (h, w, 3)).copy() + (0.03 * fine)[..., None]
        img[mortar] = (0.85, 0.85, 0.80)
        return img
    if cls == TREE:
        blobs = _smooth_noise(rng, h, w, (int(10 * s) + 2, int(10 * s) + 2))
        dark = (blobs > 0.25)[..., None]
        img = _rgb((0.10, 0.38, 0.10), jit) + (0.05 * fine)[..., None]
        return np.where(dark, img * 0.55, img)
    if cls == ROCK:
        n = _smooth_noise(rng, h, w, (int(5 * s) + 2, int(5 * s) + 2))
        cracks = np.abs(n) < 0.06
        img = _rgb((0.55, 0.55, 0.55), jit) + (0.10 * n + 0.03 * fine)[..., None]
        img[cracks] = (0.25, 0.25, 0.25)
        return img
    # unlabelled: neutral grey noise
    return 0.5 + 0.15 * fine[..., None] * np.ones(3)


# ---------------------------------------------------------------------------------------------
# layouts
# ---------------------------------------------------------------------------------------------
def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2 <= 1.0


def make_scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One procedural scene: (image (H, W, 3) uint8, label (H, W) uint8 model ids)."""
    yy, xx = np.mgrid[0:h, 0:w]
    label = np.full((h, w), SKY, dtype=np.uint8)
    horizon = h * rng.uniform(0.30, 0.60)
    ground = yy >= horizon
    base = GRASS if rng.random() < 0.65 else SAND
    label[ground] = base
    if rng.random() < 0.5:  # mountain ridge above the horizon
        amp = h * rng.uniform(0.08, 0.25)
        ridge = horizon - amp * (0.55 + 0.45 * np.sin(xx[0] / w * rng.uniform(3, 9) + rng.uniform(0, 6)))
        label[(yy >= ridge[None, :]) & ~ground] = MOUNTAIN
    for _ in range(rng.integers(0, 4)):  # clouds in the sky
        cy, cx = rng.uniform(0, horizon * 0.7), rng.uniform(0, w)
        m = _ellipse(h, w, cy, cx, h * rng.uniform(0.03, 0.08), w * rng.uniform(0.08, 0.2))
        label[m & (label == SKY)] = CLOUD
    if rng.random() < 0.5:  # lake or sea band below the horizon, with a sand shore
        depth = horizon + (h - horizon) * rng.uniform(0.25, 0.6)
        shore = depth + (h - horizon) * rng.uniform(0.05, 0.15)
        wobble = (h * 0.02) * np.sin(xx / w * rng.uniform(4, 12))
        label[ground & (yy < depth + wobble)] = WATER
        label[ground & (yy >= depth + wobble) & (yy < shore + wobble)] = SAND
    if rng.random() < 0.5:  # road from the bottom to a vanishing point on the horizon
        vx = rng.uniform(0.3, 0.7) * w
        half_bottom = rng.uniform(0.15, 0.35) * w
        t = np.clip((yy - horizon) / max(h - horizon, 1), 0, 1)
        label[ground & (np.abs(xx - (vx + (w / 2 - vx) * t)) <= half_bottom * t)] = ROAD
    if rng.random() < 0.5:  # buildings standing on the horizon
        for _ in range(rng.integers(1, 5)):
            bw, bh = w * rng.uniform(0.08, 0.22), h * rng.uniform(0.12, 0.40)
            x0 = rng.uniform(0, w - bw)
            label[(xx >= x0) & (xx < x0 + bw) & (yy >= horizon - bh) & (yy < horizon + h * 0.03)] = BUILDING
    for _ in range(rng.integers(0, 5)):  # trees
        r = min(h, w) * rng.uniform(0.05, 0.12)
        cy = horizon + rng.uniform(-0.5, 1.5) * r
        label[_ellipse(h, w, cy - r, rng.uniform(0, w), r, r * rng.uniform(0.7, 1.0))] = TREE
    for _ in range(rng.integers(0, 3)):  # rocks on the ground
        cy = rng.uniform(horizon, h)
        m = _ellipse(h, w, cy, rng.uniform(0, w), h * rng.uniform(0.02, 0.06), w * rng.uniform(0.03, 0.08))
        label[m & ground] = ROCK
    if rng.random() < 0.1:  # a rare don't-care patch
        ph, pw = int(h * rng.uniform(0.05, 0.12)) + 1, int(w * rng.uniform(0.05, 0.12)) + 1
        y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        label[y0:y0 + ph, x0:x0 + pw] = UNLABELLED

    image = np.zeros((h, w, 3), dtype=np.float64)
    for cls in np.unique(label):
        m = label == cls
        image[m] = _texture(int(cls), rng, h, w, horizon)[m]
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), label


class DemoSpec(DatasetSpec):
    """Procedural outdoor scenes (sky, cloud, mountain, water, grass, sand, road, building, tree, rock)."""

    name = "demo"
    classes = [ClassInfo(i, n, c) for i, (n, c) in enumerate(DEMO_CLASSES)]
    dontcare = 0
    default_size = (64, 64)
    has_instances = False
    splits = ("train", "val")
    procedural = True  # the loader materialises iter_raw() into cached shards

    @property
    def raw_to_class(self):
        return np.arange(len(DEMO_CLASSES), dtype=np.int64)

    def default_options(self):
        return {"data.size": [64, 64]}

    def num_samples(self, split: str, train_samples: int) -> int:
        """Number of samples of ``split``: ``train_samples`` (data.demo_samples) or a fixed 64 for val."""
        return train_samples if split == "train" else VAL_SAMPLES

    def iter_raw(self, root: str | None, split: str, *, samples: int = 256, size: tuple[int, int] = (64, 64),
                 seed: int = 0) -> Iterator[RawSample]:
        """Generate ``num_samples(split, samples)`` scenes of ``size`` (H, W), deterministically from ``seed``."""
        if split not in _SPLIT_CODE:
            raise DataError(f"demo dataset: unknown split {split!r}; available: train, val")
        h, w = int(size[0]), int(size[1])
        for i in range(self.num_samples(split, samples)):
            yield self.make_sample(split, i, size=(h, w), seed=seed)

    def make_sample(self, split: str, index: int, *, size: tuple[int, int], seed: int = 0) -> RawSample:
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
        image, label = make_scene(rng, int(size[0]), int(size[1]))
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
        key = f"demo_{split}_{index:06d}"
        return RawSample(key=key, image_bytes=buf.getvalue(), image_ext="png", label=label,
                         source=f"procedural:{split}/{index}", label_source=f"procedural:{split}/{index}")
