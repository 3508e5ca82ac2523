"""Convert a dataset's official layout (or a procedural dataset) into shards plus a dataset card.

Specs that implement ``list_raw(root, split)`` (work items) and ``load_raw(root, split, item)``
(one RawSample) are converted by several worker processes; others are read through ``iter_raw``.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from gensynth.errors import DataError
from gensynth.interfaces import DatasetSpec
from gensynth.data.shards import (EncodedSample, ShardWriter, card_filename, encode_sample, make_card,
                                  shard_filename, write_json_atomic)


@dataclass
class ConvertOptions:
    """resize: (H, W) to store pre-resized samples, or None for the original bytes.
    workers: processes decoding/validating samples. skip_bad: skip bad samples and report them
    (``NAME-SPLIT.skipped.json``) instead of stopping. raw_kwargs: extra iter_raw arguments (demo)."""

    resize: tuple[int, int] | None = None
    workers: int = 1
    skip_bad: bool = False
    shard_size: int = 1000
    progress: bool = True
    raw_kwargs: dict[str, Any] = field(default_factory=dict)


_WORKER_STATE: dict[str, Any] = {}


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _init_worker(spec: DatasetSpec, root: str, split: str, resize) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER_STATE.update(spec=spec, root=root, split=split, resize=resize)


def _init_pool_worker(spec: DatasetSpec, root: str, split: str, resize) -> None:
    """A pool worker's own signal handling, never the parent's: SIGTERM ends it (as ``Pool.terminate`` expects;
    the trainer's handler would only note a stop request and the pool's shutdown would wait forever), SIGINT is
    left to the parent (Ctrl-C reaches the whole process group). Signals were blocked at the fork: unblocked here."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    _init_worker(spec, root, split, resize)


def _start_pool(workers: int, initargs: tuple):
    """Worker processes that do not inherit the caller's SIGTERM/SIGINT handlers (see _init_pool_worker).

    SIGTERM and SIGINT are blocked while the workers are forked, so none arrives before a worker has reset its
    handlers; a signal meant for the caller in that moment is delivered to it when they are unblocked."""
    ctx = mp.get_context("spawn" if os.environ.get("GENSYNTH_MP_SPAWN") else None)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        return ctx.Pool(workers, initializer=_init_pool_worker, initargs=initargs)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _work(item) -> tuple[str, Any, str]:
    s = _WORKER_STATE
    try:
        raw = s["spec"].load_raw(s["root"], s["split"], item)
        return "ok", encode_sample(s["spec"], raw, s["resize"]), ""
    except DataError as exc:
        return "bad", str(item), str(exc)


def _sequential(spec: DatasetSpec, root, split: str, opts: ConvertOptions) -> Iterator[tuple[str, Any, str]]:
    items = spec.list_raw(root, split) if hasattr(spec, "load_raw") else []
    if items:
        _init_worker(spec, root, split, opts.resize)
        for item in items:
            yield _work(item)
        return
    for raw in spec.iter_raw(root, split, **opts.raw_kwargs):
        try:
            yield "ok", encode_sample(spec, raw, opts.resize), ""
        except DataError as exc:
            yield "bad", raw.source, str(exc)


def _count(spec: DatasetSpec, root, split: str, opts: ConvertOptions) -> int | None:
    if hasattr(spec, "load_raw"):
        return len(spec.list_raw(root, split)) or None
    if hasattr(spec, "num_samples") and "samples" in opts.raw_kwargs:
        return spec.num_samples(split, opts.raw_kwargs["samples"])
    return None


def convert(spec: DatasetSpec, root: str | None, split: str, out: str | Path, opts: ConvertOptions | None = None,
            *, console=None) -> dict:
    """Write ``NAME-SPLIT-%06d.tar`` shards and ``NAME-SPLIT.card.json`` into ``out``; return the card.

    Bad input raises DataError naming the file (or, with ``skip_bad``, is listed in the report).
    Shards are written into a hidden staging directory inside ``out`` and moved into place only when the whole
    split converted, so a failed re-conversion leaves the previous shards and card as they were. While moving,
    the old card is removed first and the new one written last, so a half-moved split never looks complete.
    """
    opts = opts or ConvertOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    card_path = out / card_filename(spec.name, split)
    report_path = out / f"{spec.name}-{split}.skipped.json"
    remove_stale_staging(out)
    stage = out / f"{_STAGING_PREFIX}{spec.name}-{split}-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        shards, hist, skipped, has_inst = _convert_into(spec, root, split, stage, opts, console)
        if not shards:
            raise DataError(f"no samples converted for {spec.name} split {split!r} from {root}"
                            + (f" ({len(skipped)} skipped, see {report_path})" if skipped else ""))
        card = make_card(spec, split, shards, hist, source=str(root), resize=opts.resize, has_instances=has_inst,
                         skipped=len(skipped))
        card_path.unlink(missing_ok=True)
        for shard in shards:
            os.replace(stage / shard["name"], out / shard["name"])
        index = len(shards)  # shards of a previous, longer conversion with the same name
        while (stale := out / shard_filename(spec.name, split, index)).exists():
            stale.unlink()
            index += 1
        if hasattr(spec, "classes_text"):  # classes that come from the data travel with the shards
            from gensynth.data.loader import CLASSES_FILE

            (stage / CLASSES_FILE).write_text(spec.classes_text())
            os.replace(stage / CLASSES_FILE, out / CLASSES_FILE)
        if skipped:
            write_json_atomic(report_path, {"dataset": spec.name, "split": split, "source": str(root),
                                            "skipped": skipped})
        else:
            report_path.unlink(missing_ok=True)
        write_json_atomic(card_path, card)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return card


_STAGING_PREFIX = ".converting-"


def remove_stale_staging(out: Path) -> None:
    """Remove staging directories of conversions whose process is gone (killed while converting)."""
    for p in out.glob(f"{_STAGING_PREFIX}*"):
        pid = p.name.rsplit("-", 1)[-1]
        if p.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _convert_into(spec: DatasetSpec, root, split: str, stage: Path, opts: ConvertOptions, console):
    """Convert every sample into shards in ``stage``: (shards, raw-id histogram, skipped items, has instances)."""
    total = _count(spec, root, split, opts)
    use_pool = opts.workers > 1 and hasattr(spec, "load_raw") and bool(total)
    writer = ShardWriter(stage, spec.name, split, opts.shard_size)
    hist = np.zeros(0, dtype=np.int64)
    skipped: list[dict] = []
    has_inst = False
    pool = None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn(f"converting {spec.name} {split}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=console, disable=not opts.progress, transient=False)
    try:
        if use_pool:
            pool = _start_pool(opts.workers, (spec, root, split, opts.resize))
            results = pool.imap(_work, spec.list_raw(root, split), chunksize=1)
        else:
            results = _sequential(spec, root, split, opts)
        with progress:
            task = progress.add_task("convert", total=total)
            for status, payload, message in results:
                if status == "bad":
                    if not opts.skip_bad:
                        raise DataError(message)
                    skipped.append({"item": payload, "problem": message})
                else:
                    enc: EncodedSample = payload
                    writer.write(enc.key, enc.files)
                    has_inst = has_inst or "inst.png" in enc.files
                    if len(enc.histogram) > len(hist):
                        hist = np.pad(hist, (0, len(enc.histogram) - len(hist)))
                    hist[: len(enc.histogram)] += enc.histogram
                progress.advance(task)
        shards = writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return shards, hist, skipped, has_inst


def read_card_file(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable dataset card ({exc})") from None
