"""Samples/s decoded and transformed at 256x512 (H x W), from shards (pre-resized and original-size) and
from the raw official layout, per worker count. Uses a synthetic Cityscapes-layout fixture of 2048x1024
PNGs (or --source ROOT for a real Cityscapes root).

    OMP_NUM_THREADS=1 python benchmarks/data_loader.py --samples 16 --workers 0 1 2
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from gensynth.config import DataConfig
from gensynth.data.convert import ConvertOptions, convert
from gensynth.data.loader import eval_batches
from gensynth_datasets.cityscapes import CityscapesSpec


def make_layout(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        d_img, d_gt = root / "leftImg8bit/val/bench", root / "gtFine/val/bench"
        d_img.mkdir(parents=True, exist_ok=True)
        d_gt.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
        Image.fromarray(base).resize((2048, 1024), Image.BILINEAR).save(d_img / f"bench_{i:06d}_000019_leftImg8bit.png")
        lab = rng.integers(0, 34, (32, 64), dtype=np.uint8)
        Image.fromarray(lab).resize((2048, 1024), Image.NEAREST).save(d_gt / f"bench_{i:06d}_000019_gtFine_labelIds.png")


def rate(cfg: DataConfig, workers: int, n: int) -> float:
    t = time.perf_counter()
    count = sum(len(b) for b in eval_batches(cfg, CityscapesSpec(), batch_size=4, num_workers=workers))
    assert count == n
    return count / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--source", default=None, help="a real Cityscapes root (val split)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = Path(args.source) if args.source else tmp / "raw"
        if not args.source:
            make_layout(root, args.samples)
        n = len(CityscapesSpec().list_raw(str(root), "val"))
        spec = CityscapesSpec()
        convert(spec, str(root), "val", tmp / "orig", ConvertOptions(shard_size=4, progress=False))
        convert(spec, str(root), "val", tmp / "small", ConvertOptions(resize=(256, 512), shard_size=4, progress=False))
        print(f"cpu cores: {os.cpu_count()}  samples: {n}  output 256x512")
        for w in args.workers:
            for label, r in (("shards pre-resized 256x512", str(tmp / "small")),
                             ("shards original 2048x1024", str(tmp / "orig"))):
                cfg = DataConfig(name="cityscapes", root=r, split="val", size=(256, 512))
                print(f"workers={w}  {label:28s} {rate(cfg, w, n):8.1f} samples/s")
            cache = tmp / f"cache{w}"
            cfg = DataConfig(name="cityscapes", root=str(root), split="val", size=(256, 512), cache_dir=str(cache))
            t = time.perf_counter()
            sum(len(b) for b in eval_batches(cfg, spec, batch_size=4, num_workers=w))
            print(f"workers={w}  {'raw layout (first: convert)':28s} {n / (time.perf_counter() - t):8.1f} samples/s")
            print(f"workers={w}  {'raw layout (then: cache)':28s} {rate(cfg, w, n):8.1f} samples/s")


if __name__ == "__main__":
    main()
