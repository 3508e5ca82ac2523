"""The raw-layout cache is keyed by its source files' content (size and mtime): an edited image is re-converted."""
from __future__ import annotations

import io
import os

import numpy as np
from rich.console import Console

from gensynth.config import DataConfig
from gensynth.data import raw_cache
from gensynth.data.loader import eval_batches
from gensynth_datasets.cityscapes import CityscapesSpec
from test_data_convert import make_cityscapes


def _first_image(cfg) -> np.ndarray:
    return next(eval_batches(cfg, CityscapesSpec(), batch_size=4)).image[0].numpy()


def test_edited_image_is_reconverted_with_a_message(tmp_path, monkeypatch):
    make_cityscapes(tmp_path / "cs", split="val", n=2, h=16, w=32)
    cfg = DataConfig(name="cityscapes", root=str(tmp_path / "cs"), size=(8, 16), num_workers=0,
                     cache_dir=str(tmp_path / "cache"))
    monkeypatch.setattr(raw_cache, "_VERIFIED", set())
    before = _first_image(cfg)
    card = next((tmp_path / "cache").rglob("*.card.json"))
    record = card.parent / raw_cache.SOURCE_RECORD
    assert record.exists()
    built = card.stat().st_mtime_ns
    # unchanged sources, a new process (forgotten verification): the cache is reused
    monkeypatch.setattr(raw_cache, "_VERIFIED", set())
    raw_cache.ensure_cached(cfg, CityscapesSpec(), "val", progress=False)
    assert card.stat().st_mtime_ns == built
    # an image edited in place (same name): rebuilt, saying which file changed
    image = next((tmp_path / "cs/leftImg8bit/val").rglob("aachen_000000_000019_leftImg8bit.png"))
    from PIL import Image

    Image.fromarray(np.full((16, 32, 3), 255, np.uint8)).save(image)
    os.utime(image, ns=(built + 10**9, built + 10**9))
    monkeypatch.setattr(raw_cache, "_VERIFIED", set())
    out = io.StringIO()
    raw_cache.ensure_cached(cfg, CityscapesSpec(), "val", console=Console(file=out, width=300), progress=False)
    assert "rebuilding the cityscapes val cache" in out.getvalue()
    assert "1 changed (e.g. leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png)" in out.getvalue()
    after = _first_image(cfg)
    assert not np.array_equal(before, after) and np.allclose(after, 1.0)


def test_added_file_and_old_cache_without_record_rebuild(tmp_path, monkeypatch):
    make_cityscapes(tmp_path / "cs", split="val", n=1, h=16, w=32)
    cfg = DataConfig(name="cityscapes", root=str(tmp_path / "cs"), size=(8, 16), num_workers=0,
                     cache_dir=str(tmp_path / "cache"))
    monkeypatch.setattr(raw_cache, "_VERIFIED", set())
    out_dir = raw_cache.ensure_cached(cfg, CityscapesSpec(), "val", progress=False)
    (out_dir / raw_cache.SOURCE_RECORD).unlink()  # as converted by an older gensynth
    monkeypatch.setattr(raw_cache, "_VERIFIED", set())
    msg = io.StringIO()
    raw_cache.ensure_cached(cfg, CityscapesSpec(), "val", console=Console(file=msg, width=300), progress=False)
    assert "no record of its source files" in msg.getvalue() and (out_dir / raw_cache.SOURCE_RECORD).exists()
    (tmp_path / "cs" / "notes.txt").write_text("x")
    monkeypatch.setattr(raw_cache, "_VERIFIED", set())
    msg = io.StringIO()
    raw_cache.ensure_cached(cfg, CityscapesSpec(), "val", console=Console(file=msg, width=300), progress=False)
    assert "1 added (e.g. notes.txt)" in msg.getvalue()
