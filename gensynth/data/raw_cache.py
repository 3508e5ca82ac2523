"""The shard cache: raw official layouts and the procedural demo are converted once into
``<cache>/shards/<name>-<split>-<hash>/`` (pre-resized to the training size), under a file lock
so that several ranks or processes never convert the same thing twice.

Cache location: ``data.cache_dir``, else ``$GENSYNTH_CACHE``, else ``~/.cache/gensynth``.

Content keys: a converted raw layout records each source file's size and modification time
(``source.json``). When a file under the root was edited, added or removed since, the cache is rebuilt, with a
message naming what changed; so is a cache converted before these records existed. The source tree is walked once
per process (a stat per file), not at every look-up.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from gensynth.data.shards import CARD_FORMAT, card_filename
from gensynth.errors import DataError
from gensynth.interfaces import DatasetSpec

DEMO_SEED = 0
SOURCE_RECORD = "source.json"
_VERIFIED: set[str] = set()  # cache directories whose source this process has compared already


def source_fingerprint(root: str | Path) -> dict[str, list[int]]:
    """Every file under ``root`` (relative path, '/'-separated) -> [size, mtime in ns]."""
    root = Path(root)
    out: dict[str, list[int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except FileNotFoundError:  # removed while walking
                continue
            out[path.relative_to(root).as_posix()] = [st.st_size, st.st_mtime_ns]
    return out


def source_changes(recorded: dict[str, list[int]] | None, current: dict[str, list[int]]) -> str | None:
    """Why a cache built from ``recorded`` is stale for ``current`` (None: it is not)."""
    if recorded is None:
        return "the cache has no record of its source files (converted by an older gensynth)"
    changed = sorted(k for k in current.keys() & recorded.keys() if list(recorded[k]) != list(current[k]))
    added = sorted(current.keys() - recorded.keys())
    removed = sorted(recorded.keys() - current.keys())
    if not (changed or added or removed):
        return None
    parts = []
    for what, names in (("changed", changed), ("added", added), ("removed", removed)):
        if names:
            parts.append(f"{len(names)} {what} (e.g. {names[0]})")
    return "source files " + ", ".join(parts) + " since it was converted"


def _read_record(out: Path) -> dict | None:
    try:
        return json.loads((out / SOURCE_RECORD).read_text())["files"]
    except (FileNotFoundError, KeyError, ValueError):
        return None


def _say(console, message: str) -> None:
    if console is not None:
        console.print(message, highlight=False)
    else:
        print(message, file=sys.stderr)


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
    current = None
    if source is not None and (str(out) not in _VERIFIED or not card.exists()):
        current = source_fingerprint(source)
    if card.exists() and current is None:
        return out
    if card.exists():
        stale = source_changes(_read_record(out), current)
        if stale is None:
            _VERIFIED.add(str(out))
            return out
        _say(console, f"rebuilding the {spec.name} {split} cache {out}: {stale}")
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.parent / f".{out.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if card.exists() and (current is None or source_changes(_read_record(out), current) is None):
                _VERIFIED.add(str(out))
                return out  # another process converted it while we waited
            for left in out.parent.glob(f".{out.name}.tmp*"):  # of killed conversions (we hold their lock now)
                shutil.rmtree(left, ignore_errors=True)
            tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
            opts = ConvertOptions(resize=size, workers=1 if root is None else max(1, min(4, os.cpu_count() or 1)),
                                  skip_bad=False, shard_size=_shard_size(spec, data_cfg), progress=progress,
                                  raw_kwargs=raw_kwargs)
            try:
                convert(spec, source, split, tmp, opts, console=console)
                if current is not None:
                    (tmp / SOURCE_RECORD).write_text(json.dumps({"root": source, "files": current}))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
            if current is not None:
                _VERIFIED.add(str(out))
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return out


def _shard_size(spec: DatasetSpec, data_cfg) -> int:
    """Small shards for the demo (so ranks x workers each get whole shards), 500 for real data."""
    if getattr(spec, "procedural", False):
        return 16
    return 500
