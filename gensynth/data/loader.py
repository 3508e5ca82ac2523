"""The one streaming loader every model reads its data through.

Sources (``data.root``): a shard directory, a brace pattern of shards, ``http(s)://``, ``s3://``,
``gs://`` or ``pipe:`` URLs, a raw official layout (converted once into the cache), or None for the
procedural ``demo``. Shards are split into *units* (whole shards, or every k-th sample of a shard
when there are fewer shards than reading slots); a slot is one (rank, worker) pair.

Training: in epoch e every slot reads ceil(units / slots) units of a permutation drawn from
(seed, e) (wrapping around = resampling, so every slot has data and no rank starves), shuffles
undecoded samples in a buffer seeded by (seed, e, slot), and batches consecutive samples forever.
The DataLoader hands out batch k of a rank from worker k % workers, so ``start_batch`` is turned
into a per-worker sample count that is skipped before decoding (whole epochs from the card's
counts without reading at all).

Evaluation: unit i goes to slot i % slots, samples in their stored order, each exactly once.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gensynth.data import openers
from gensynth.data.raw_cache import ensure_cached, target_size
from gensynth.data.shards import card_filename, check_card_shard_names, iter_tar_samples
from gensynth.data.transforms import Sample, SampleDecoder
from gensynth.errors import DataError, GensynthError
from gensynth.trust import refusal, runs_command
from gensynth.interfaces import Condition, DatasetSpec, check_label_range, instance_edges, one_hot


@dataclass
class Batch:
    """image: (B, 3, H, W) float32 in [-1, 1]; label: (B, H, W) int64 model class ids;
    instance: (B, H, W) int64 instance ids or None; keys: the samples' keys."""

    image: Tensor
    label: Tensor
    instance: Tensor | None
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    def pin_memory(self) -> "Batch":
        return Batch(self.image.pin_memory(), self.label.pin_memory(),
                     None if self.instance is None else self.instance.pin_memory(), self.keys)

    def to(self, device) -> "Batch":
        return Batch(self.image.to(device, non_blocking=True), self.label.to(device, non_blocking=True),
                     None if self.instance is None else self.instance.to(device, non_blocking=True), self.keys)


def collate(samples: list[Sample]) -> Batch:
    inst = None
    if samples and all(s.instance is not None for s in samples):
        inst = torch.stack([s.instance for s in samples])
    return Batch(torch.stack([s.image for s in samples]), torch.stack([s.label for s in samples]), inst,
                 [s.key for s in samples])


# ---------------------------------------------------------------------------------------------
# resolving shard URLs and the card
# ---------------------------------------------------------------------------------------------
def _expand(pattern: str) -> list[str]:
    from braceexpand import braceexpand

    return list(braceexpand(pattern))


def _scan_card(urls: list[str], spec: DatasetSpec, split: str, allow_pipe: bool = False) -> dict:
    """A minimal card built by reading every shard once (when no card was published)."""
    warnings.warn(f"no dataset card found for {spec.name} {split}; counting samples by reading {len(urls)} shard(s)",
                  stacklevel=3)
    shards = []
    for url in urls:
        with openers.open_url(url, allow_pipe=allow_pipe) as f:
            count = sum(1 for _ in iter_tar_samples(f, url, require_end=True))
        shards.append({"name": url.rsplit("/", 1)[-1], "count": count})
    return {"dataset": spec.name, "split": split, "num_samples": sum(s["count"] for s in shards), "shards": shards}


def _load_card(url: str) -> dict:
    import json

    try:
        return json.loads(openers.read_bytes(url))
    except json.JSONDecodeError as exc:
        raise DataError(f"{url}: the dataset card is not valid JSON ({exc})") from None


def _check_card(card: dict, where: str, spec: DatasetSpec, split: str) -> dict:
    if card.get("dataset") not in (None, spec.name):
        raise DataError(f"{where}: the shards hold dataset {card.get('dataset')!r}, but data.name is {spec.name!r}")
    if not card.get("shards"):
        raise DataError(f"{where}: the dataset card lists no shards for split {split!r}")
    check_card_shard_names(card, where)
    return card


def _from_dir(base: str, spec: DatasetSpec, split: str) -> tuple[list[str], dict] | None:
    card_url = openers.join(base, card_filename(spec.name, split))
    if openers.exists(card_url):
        card = _check_card(_load_card(card_url), card_url, spec, split)
        return [openers.join(base, s["name"]) for s in card["shards"]], card
    tars = openers.list_dir(base, f"{spec.name}-{split}-*.tar")
    if tars:
        return tars, _scan_card(tars, spec, split)
    return None


CLASSES_FILE = "classes.json"  # written beside the shards of datasets whose classes come from the data (folder)


def configure_spec(spec: DatasetSpec, data_cfg) -> DatasetSpec:
    """Specs that read their classes from the data (``folder``) are configured from data.root: the raw layout's
    classes file, or the ``classes.json`` that conversion writes beside the shards (local or remote)."""
    if not hasattr(spec, "for_root") or not data_cfg.root or getattr(spec, "root", None) is not None:
        return spec
    root = str(data_cfg.root)
    local = openers.local_path(root)
    if local is not None and local.is_dir():
        return spec.for_root(local)
    if openers.is_pipe(root):
        raise DataError(f"data.root {root!r}: dataset {spec.name!r} reads its classes from the {CLASSES_FILE} beside "
                        f"its shards, which a pipe: root does not have; give the shards' directory or URL")
    base = openers.dirname(_expand(root)[0]) if ("{" in root or root.endswith(".tar")) else root
    url = openers.join(base, CLASSES_FILE)
    if openers.exists(url):
        return spec.from_classes_text(openers.read_bytes(url).decode(), url)
    if local is not None and not (local.exists() or Path(base).expanduser().is_dir()):
        return spec  # a local root that does not exist: resolve_shards names it
    raise DataError(f"{url} does not exist: dataset {spec.name!r} reads its classes from the {CLASSES_FILE} that "
                    f"`gensynth datasets convert` writes beside the shards; copy it there with them")


def resolve_shards(data_cfg, spec: DatasetSpec, split: str) -> tuple[list[str], dict]:
    """Shard URLs and the card. data_cfg.root may be shards (dir, brace pattern, http(s)://, s3://, gs://, pipe:),
    the raw official layout (converted once into a cache dir, with a progress bar), or None for `demo`."""
    spec = configure_spec(spec, data_cfg)
    root = data_cfg.root
    if root is None:
        return _from_dir(str(ensure_cached(data_cfg, spec, split)), spec, split)
    root = str(root)
    allow_pipe = bool(getattr(data_cfg, "allow_pipe", False))
    if runs_command(root) and not allow_pipe:
        raise DataError(refusal(root))
    if "{" in root or root.endswith(".tar") or openers.is_pipe(root):
        urls = _expand(root)
        if openers.is_pipe(root):
            return urls, _scan_card(urls, spec, split, allow_pipe)
        card_url = openers.join(openers.dirname(urls[0]), card_filename(spec.name, split))
        if openers.exists(card_url):
            card = _check_card(_load_card(card_url), card_url, spec, split)
            by_name = {s["name"]: s for s in card["shards"]}
            names = [u.rsplit("/", 1)[-1] for u in urls]
            if all(n in by_name for n in names):
                shards = [by_name[n] for n in names]
                return urls, {**card, "shards": shards, "num_samples": sum(s["count"] for s in shards)}
        return urls, _scan_card(urls, spec, split, allow_pipe)
    if openers.is_remote(root):
        found = _from_dir(root, spec, split)
        if found is None:
            raise DataError(f"{root}: found neither {card_filename(spec.name, split)} nor "
                            f"{spec.name}-{split}-*.tar shards there")
        return found
    path = openers.local_path(root)
    if not path.exists():
        raise DataError(f"data.root {root} does not exist")
    if path.is_dir():
        found = _from_dir(str(path), spec, split)
        if found is not None:
            return found
        if any(path.glob("*.tar")) or any(path.glob("*.card.json")):
            raise DataError(f"{path}: holds shards but none for dataset {spec.name!r} split {split!r} "
                            f"(expected {card_filename(spec.name, split)} or {spec.name}-{split}-*.tar)")
        # the raw official layout: convert once into the cache
        return _from_dir(str(ensure_cached(data_cfg, spec, split)), spec, split)
    raise DataError(f"data.root {root} is a file; give a shard directory, a brace pattern or a raw layout directory")


def epoch_length(data_cfg, spec: DatasetSpec, split: str) -> int:
    """Number of samples in the split (from the card)."""
    return int(resolve_shards(data_cfg, spec, split)[1]["num_samples"])


# ---------------------------------------------------------------------------------------------
# units and the per-slot sample streams
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    """Samples j of shard ``shard`` with j % nparts == part."""

    shard: int
    part: int
    nparts: int


def make_units(n_shards: int, slots: int) -> list[Unit]:
    nparts = 1 if n_shards >= slots else math.ceil(slots / n_shards)
    return [Unit(s, p, nparts) for s in range(n_shards) for p in range(nparts)]


def unit_count(unit: Unit, counts: list[int]) -> int:
    return len(range(unit.part, counts[unit.shard], unit.nparts))


class _ShardStream(IterableDataset):
    """Per-(rank, worker) stream of batches; see the module docstring for the plan."""

    def __init__(self, urls: list[str], counts: list[int], decoder: SampleDecoder, *, train: bool, batch_size: int,
                 rank: int, world_size: int, seed: int, start_batch: int, shuffle_buffer: int, flip: bool,
                 limit: int | None, num_workers: int, allow_pipe: bool = False):
        super().__init__()
        self.allow_pipe = allow_pipe
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside 0..{world_size - 1}")
        self.urls, self.counts, self.decoder = urls, counts, decoder
        self.train, self.batch_size = train, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.start_batch, self.shuffle_buffer, self.flip = start_batch, shuffle_buffer, flip
        self.limit = limit
        self.num_workers = max(1, num_workers)
        self.slots = world_size * self.num_workers
        self.units = make_units(len(urls), self.slots)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    # -- reading ---------------------------------------------------------------------------
    def _read_unit(self, unit: Unit) -> Iterator[tuple[str, dict, int, str]]:
        """(key, files, global index, shard URL) of the unit's samples in stored order, undecoded."""
        url = self.urls[unit.shard]
        n = 0
        with openers.open_url(url, allow_pipe=self.allow_pipe) as f:
            for j, (key, files) in enumerate(iter_tar_samples(f, url)):
                n = j + 1
                if j % unit.nparts == unit.part:
                    yield key, files, int(self.offsets[unit.shard]) + j, url
        if n != self.counts[unit.shard]:
            raise DataError(f"{url}: holds {n} samples but the dataset card says {self.counts[unit.shard]} "
                            f"(re-convert or check with `gensynth datasets inspect`)")

    def _decode(self, key: str, files: dict, flip: bool, url: str) -> Sample:
        return self.decoder(key, files, flip=flip, where=url)

    # -- training --------------------------------------------------------------------------
    def _epoch_units(self, epoch: int, slot: int) -> list[Unit]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.units))
        per_slot = math.ceil(len(self.units) / self.slots)
        return [self.units[order[(slot + i * self.slots) % len(self.units)]] for i in range(per_slot)]

    def _shuffled(self, units: list[Unit], rng: np.random.Generator) -> Iterator[tuple[str, dict, int, str]]:
        buf: list = []
        for unit in units:
            for item in self._read_unit(unit):
                if len(buf) < max(1, self.shuffle_buffer):
                    buf.append(item)
                    continue
                i = int(rng.integers(len(buf)))
                buf[i], item = item, buf[i]
                yield item
        rng.shuffle(buf)  # in-place permutation of the remainder
        yield from buf

    def _train_samples(self, slot: int, skip: int) -> Iterator[Sample]:
        epoch = 0
        while True:
            units = self._epoch_units(epoch, slot)
            n = sum(unit_count(u, self.counts) for u in units)
            if n == 0:
                raise DataError("the shards hold no samples")
            if skip >= n:  # skip a whole epoch without reading it
                skip -= n
                epoch += 1
                continue
            flips = np.random.default_rng([self.seed, epoch, slot, 2]).random(n) < 0.5
            rng = np.random.default_rng([self.seed, epoch, slot, 1])
            for pos, (key, files, _, url) in enumerate(self._shuffled(units, rng)):
                if pos < skip:
                    continue  # skipped before decoding
                yield self._decode(key, files, bool(self.flip and flips[pos]), url)
            skip = 0
            epoch += 1

    # -- evaluation ------------------------------------------------------------------------
    def _eval_samples(self, slot: int) -> Iterator[Sample]:
        for i, unit in enumerate(self.units):
            if i % self.slots != slot:
                continue
            if self.limit is not None and self.offsets[unit.shard] >= self.limit:
                continue
            for key, files, g, url in self._read_unit(unit):
                if self.limit is None or g < self.limit:
                    yield self._decode(key, files, False, url)

    # -- batching --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        if get_worker_info() is None:
            yield from self._batches()
            return
        try:
            yield from self._batches()
        except GensynthError as exc:  # handed to the main process as is (no "Caught ... in DataLoader worker" wall)
            yield _ErrorInWorker(exc)

    def _batches(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.num_workers:
            raise RuntimeError(f"stream built for {self.num_workers} workers runs in {workers}")
        if self.train:
            # batch k of this rank comes from worker k % workers. After skipping start_batch batches, the
            # DataLoader's worker w produces original batches start_batch + w, + workers, ...: it plays the
            # role of the original worker (w + start_batch) % workers.
            role = (worker + self.start_batch) % workers
            own_skipped = max(0, -(-(self.start_batch - role) // workers))
            samples = self._train_samples(self.rank * workers + role, own_skipped * self.batch_size)
        else:
            samples = self._eval_samples(self.rank * workers + worker)
        chunk: list[Sample] = []
        for s in samples:
            chunk.append(s)
            if len(chunk) == self.batch_size:
                yield collate(chunk)
                chunk = []
        if chunk:
            yield collate(chunk)


class _ErrorInWorker:
    """A gensynth error raised in a DataLoader worker, sent to the main process to be raised there unchanged."""

    def __init__(self, exc: GensynthError):
        self.exc = exc


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _loader(stream: _ShardStream, num_workers: int) -> Iterator[Batch]:
    if num_workers <= 0:
        yield from stream
        return
    dl = DataLoader(stream, batch_size=None, num_workers=num_workers, worker_init_fn=_worker_init,
                    prefetch_factor=2, pin_memory=torch.cuda.is_available(), persistent_workers=False)
    it = iter(dl)
    try:
        for item in it:
            if isinstance(item, _ErrorInWorker):
                raise item.exc
            yield item
    finally:  # workers end now, not whenever the garbage collector frees an iterator kept alive by a traceback
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _decoder(data_cfg, spec: DatasetSpec) -> SampleDecoder:
    return SampleDecoder(spec.raw_to_class, target_size(data_cfg, spec), spec.image_resample, spec.name)


def train_batches(data_cfg, spec: DatasetSpec, *, batch_size: int, rank: int, world_size: int, seed: int,
                  start_batch: int = 0, num_workers: int | None = None) -> Iterator[Batch]:
    """Infinite stream of per-rank batches; shards split by rank and worker and resampled; shuffling deterministic
    from (seed, epoch); every rank yields batches forever (no rank starves); start_batch skips ahead (before decoding
    where possible) so a resumed run sees exactly the batches it would have seen. Random flip as the official code.

    The same (seed, world_size, num_workers) must be used on resume for the stream to be identical."""
    spec = configure_spec(spec, data_cfg)
    urls, card = resolve_shards(data_cfg, spec, data_cfg.split)
    counts = [int(s["count"]) for s in card["shards"]]
    workers = data_cfg.num_workers if num_workers is None else num_workers
    stream = _ShardStream(urls, counts, _decoder(data_cfg, spec), train=True, batch_size=batch_size, rank=rank,
                          world_size=world_size, seed=seed, start_batch=start_batch,
                          shuffle_buffer=data_cfg.shuffle_buffer, flip=data_cfg.flip, limit=None,
                          num_workers=workers, allow_pipe=bool(getattr(data_cfg, "allow_pipe", False)))
    return _loader(stream, workers)


def eval_batches(data_cfg, spec: DatasetSpec, *, batch_size: int, rank: int = 0, world_size: int = 1,
                 split: str | None = None, limit: int | None = None,
                 num_workers: int | None = None) -> Iterator[Batch]:
    """Every sample exactly once across ranks and workers, in a fixed order; no flip.

    ``limit``: only the first ``limit`` samples of the split (in stored order). ``split`` defaults to data.val_split."""
    split = split or data_cfg.val_split
    spec = configure_spec(spec, data_cfg)
    urls, card = resolve_shards(data_cfg, spec, split)
    counts = [int(s["count"]) for s in card["shards"]]
    workers = data_cfg.num_workers if num_workers is None else num_workers
    stream = _ShardStream(urls, counts, _decoder(data_cfg, spec), train=False, batch_size=batch_size, rank=rank,
                          world_size=world_size, seed=0, start_batch=0, shuffle_buffer=0, flip=False, limit=limit,
                          num_workers=workers, allow_pipe=bool(getattr(data_cfg, "allow_pipe", False)))
    return _loader(stream, workers)


def to_condition(batch: Batch, num_classes: int, device, *, with_edges: bool = False, dontcare_last: bool = False,
                 dontcare: int | None = 0) -> tuple[Tensor, Condition]:
    """(real image on device, Condition with one-hot labels built ON THE DEVICE). dontcare_last rolls ids so the
    don't-care class becomes the last channel (SPADE convention). with_edges adds instance edges
    (gensynth.interfaces.instance_edges); they are None when the batch has no instance maps.

    image: (B, 3, H, W); Condition.labels: (B, num_classes, H, W); instance_edges: (B, 1, H, W) or None."""
    check_label_range(batch.label, num_classes)  # on the CPU tensor: no host-device synchronisation
    image = batch.image.to(device, non_blocking=True)
    ids = batch.label.to(device, non_blocking=True).long()
    if dontcare_last and dontcare is not None:
        ids = torch.where(ids == dontcare, torch.full_like(ids, num_classes - 1), ids - (ids > dontcare).long())
    labels = one_hot(ids, num_classes, check=False)
    edges = None
    if with_edges and batch.instance is not None:
        edges = instance_edges(batch.instance.to(device, non_blocking=True))
    return image, Condition(labels=labels, instance_edges=edges, ids=ids)
