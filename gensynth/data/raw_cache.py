"""The shard cache: raw official layouts and the procedural demo are converted once into
``<cache>/shards/<name>-<split>-<hash>/`` (pre-resized to the training size), under a file lock
so that several ranks or processes never convert the same thing twice.

Cache location: ``data.cache_dir``, else ``$GENSYNTH_CACHE``, else ``~/.cache/gensynth``.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

from gensynth.data.shards import CARD_FORMAT, card_filename
from gensynth.errors import DataError
from gensynth.interfaces import DatasetSpec

DEMO_SEED = 0


def cache_root(data_cfg) -> Path:
    root = getattr(data_cfg, "cache_dir", None) or os.environ.get("GENSYNTH_CACHE") or "~/.cache/gensynth"
    return Path(root).expanduser()


def target_size(data_cfg, spec: DatasetSpec) -> tuple[int, int]:
    """(H, W) the loader produces: data.size, else the dataset's default size."""
    size = getattr(data_cfg, "size", None) or spec.default_size
    return int(size[0]), int(size[1])


def _cache_key(spec: DatasetSpec, root: str | None, split: str, size: tuple[int, int], extra: dict) -> str:
    ident = {"name": spec.name, "root": root, "split": split, "size": list(size), "format": CARD_FORMAT, **extra}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def ensure_cached(data_cfg, spec: DatasetSpec, split: str, *, console=None, progress: bool = True) -> Path:
    """Directory holding ``NAME-SPLIT-*.tar`` and the card for ``split``, converting once if needed.

    ``data_cfg.root`` None means a procedural dataset (``spec.procedural``); otherwise it is a
    local directory in the dataset's raw official layout.
    """
    from gensynth.data.convert import ConvertOptions, convert

    size = target_size(data_cfg, spec)
    root = data_cfg.root
    extra: dict = {}
    if root is None:
        if not getattr(spec, "procedural", False):
            raise DataError(f"dataset {spec.name!r} needs data.root (--data-root): shards or its official layout")
        extra = {"samples": int(data_cfg.demo_samples), "seed": DEMO_SEED}
        raw_kwargs = {"samples": int(data_cfg.demo_samples), "size": size, "seed": DEMO_SEED}
        source = None
    else:
        source = str(Path(root).expanduser().resolve())
        raw_kwargs = {}
    out = cache_root(data_cfg) / "shards" / f"{spec.name}-{split}-{_cache_key(spec, source, split, size, extra)}"
    card = out / card_filename(spec.name, split)
    if card.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.parent / f".{out.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if card.exists():  # another process converted it while we waited
                return out
            for left in out.parent.glob(f".{out.name}.tmp*"):  # of killed conversions (we hold their lock now)
                shutil.rmtree(left, ignore_errors=True)
            tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
            opts = ConvertOptions(resize=size, workers=1 if root is None else max(1, min(4, os.cpu_count() or 1)),
                                  skip_bad=False, shard_size=_shard_size(spec, data_cfg), progress=progress,
                                  raw_kwargs=raw_kwargs)
            try:
                convert(spec, source, split, tmp, opts, console=console)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return out


def _shard_size(spec: DatasetSpec, data_cfg) -> int:
    """Small shards for the demo (so ranks x workers each get whole shards), 500 for real data."""
    if getattr(spec, "procedural", False):
        return 16
    return 500
