"""WebDataset shards: the sample encoding, the shard writer, the shard reader and the dataset card.

Shard files are ``NAME-SPLIT-%06d.tar``. Per sample (key without dots):
``<key>.jpg|png`` the original image bytes (or pre-resized PNG), ``<key>.label.png`` the raw official
ids (8-bit, or 16-bit when an id exceeds 255), ``<key>.inst.png`` a 16-bit instance map when present,
``<key>.json`` (source paths, size). Beside them ``NAME-SPLIT.card.json`` describes the split.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

import numpy as np
from PIL import Image

from gensynth import __version__
from gensynth.fileio import sha256_file
from gensynth.errors import DataError
from gensynth.interfaces import DatasetSpec, RawSample

CARD_FORMAT = "gensynth-shards/1"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def shard_filename(name: str, split: str, index: int) -> str:
    return f"{name}-{split}-{index:06d}.tar"


def card_filename(name: str, split: str) -> str:
    return f"{name}-{split}.card.json"


# ---------------------------------------------------------------------------------------------
# PNG encoding of integer maps
# ---------------------------------------------------------------------------------------------
def encode_id_png(ids: np.ndarray, *, force_16bit: bool = False) -> bytes:
    """(H, W) non-negative integer map -> lossless PNG (8-bit when max <= 255, else 16-bit)."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() > 65535):
        raise ValueError(f"id map values must be in 0..65535, got {ids.min()}..{ids.max()}")
    if force_16bit or (ids.size and ids.max() > 255):
        img = Image.fromarray(ids.astype(np.uint16))
    else:
        img = Image.fromarray(ids.astype(np.uint8), mode="L") if ids.dtype != np.uint8 else Image.fromarray(ids)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def decode_id_png(data: bytes | Image.Image) -> np.ndarray:
    """PNG bytes (mode L, P, I;16 or I) -> (H, W) int64 map of the stored ids (palette indices for P)."""
    img = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
    if img.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I", "1"):
        raise ValueError(f"expected a single-channel id PNG, got mode {img.mode}")
    return np.asarray(img).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# resizing as the official OASIS code (image bicubic, labels nearest)
# ---------------------------------------------------------------------------------------------
def nearest_resize(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) map -> (h, w) by nearest neighbour with PIL's pixel-centre convention, any dtype."""
    h, w = size
    src_h, src_w = ids.shape[:2]
    if (src_h, src_w) == (h, w):
        return ids
    ys = np.minimum(((np.arange(h) + 0.5) * src_h / h).astype(np.int64), src_h - 1)
    xs = np.minimum(((np.arange(w) + 0.5) * src_w / w).astype(np.int64), src_w - 1)
    return ids[ys[:, None], xs[None, :]]


def resize_image(img: Image.Image, size: tuple[int, int], resample: str = "bicubic") -> Image.Image:
    """PIL RGB image -> (H, W) = size with the dataset's resampling (bicubic as the official code)."""
    h, w = size
    if img.size == (w, h):
        return img
    mode = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
            "lanczos": Image.LANCZOS}[resample]
    return img.resize((w, h), mode)


# ---------------------------------------------------------------------------------------------
# validating and encoding one raw sample
# ---------------------------------------------------------------------------------------------
@dataclass
class EncodedSample:
    key: str
    files: dict[str, bytes]  # extension (without the key) -> bytes
    histogram: np.ndarray  # pixel count per raw id


def check_raw_ids(spec: DatasetSpec, label: np.ndarray, where: str) -> None:
    """DataError naming ``where`` and the first label value that is not one of the dataset's raw ids."""
    table = np.asarray(spec.raw_to_class)
    values = np.unique(label)
    bad = [int(v) for v in values if v < 0 or v >= len(table) or table[v] < 0]
    if bad:
        valid = sorted(spec.valid_raw_ids)
        allowed = f"{valid[0]}..{valid[-1]}" if valid == list(range(valid[0], valid[-1] + 1)) else \
            ", ".join(map(str, valid))
        raise DataError(f"{where}: label value {bad[0]} is not one of the {spec.name} ids "
                        f"(found {len(bad)} unknown value(s): {bad[:8]}; allowed: {allowed})")


def encode_sample(spec: DatasetSpec, raw: RawSample, resize: tuple[int, int] | None = None) -> EncodedSample:
    """Validate a raw sample and encode it for a shard (optionally pre-resized to ``resize`` (H, W)).

    Raises DataError naming the file: unreadable image, size mismatch, unknown label value.
    """
    if "." in raw.key:
        raise DataError(f"{raw.source}: sample key {raw.key!r} contains a dot (not allowed in shard keys)")
    try:
        img = Image.open(io.BytesIO(raw.image_bytes))
        img.load()
    except Exception as exc:
        raise DataError(f"{raw.source}: unreadable image ({type(exc).__name__}: {exc})") from None
    w, h = img.size
    label = np.asarray(raw.label)
    if label.ndim != 2:
        raise DataError(f"{raw.label_source}: label map must be single-channel (H, W), got shape {label.shape}")
    if label.shape != (h, w):
        raise DataError(f"{raw.label_source}: label size {label.shape[1]}x{label.shape[0]} (WxH) does not match "
                        f"image {raw.source} size {w}x{h}")
    check_raw_ids(spec, label, raw.label_source)
    inst = None if raw.instance is None else np.asarray(raw.instance)
    if inst is not None and inst.shape != (h, w):
        raise DataError(f"{raw.source}: instance map size {inst.shape[1]}x{inst.shape[0]} (WxH) does not match "
                        f"image size {w}x{h}")
    meta = {"source": raw.source, "label_source": raw.label_source, "size": [h, w]}
    if resize is not None and tuple(resize) != (h, w):
        img = resize_image(img.convert("RGB"), tuple(resize), spec.image_resample)
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=1)
        image_bytes, ext = buf.getvalue(), "png"
        label = nearest_resize(label, tuple(resize))
        inst = None if inst is None else nearest_resize(inst, tuple(resize))
        meta["resized"] = list(resize)
    else:
        image_bytes, ext = raw.image_bytes, ("jpg" if raw.image_ext == "jpeg" else raw.image_ext)
    files = {ext: image_bytes, "label.png": encode_id_png(label)}
    if inst is not None:
        files["inst.png"] = encode_id_png(inst, force_16bit=True)
    files["json"] = json.dumps(meta, sort_keys=True).encode()
    hist = np.bincount(label.ravel().astype(np.int64), minlength=len(np.asarray(spec.raw_to_class)))
    return EncodedSample(raw.key, files, hist)


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
class ShardWriter:
    """Writes samples into ``NAME-SPLIT-%06d.tar`` files of at most ``shard_size`` samples.

    Each shard is written to a hidden temporary name, fsynced and renamed when complete, so an
    interrupted run never leaves a half shard that looks whole. ``close()`` returns the shard list.
    """

    def __init__(self, out_dir: str | Path, name: str, split: str, shard_size: int = 1000):
        if shard_size < 1:
            raise DataError(f"shard size must be >= 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.name, self.split, self.shard_size = name, split, shard_size
        self.shards: list[dict] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._count = 0

    def _open(self) -> None:
        final = shard_filename(self.name, self.split, len(self.shards))
        self._tmp = self.out_dir / f".{final}.tmp{os.getpid()}"
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self._count = 0

    def _finish(self) -> None:
        assert self._tar is not None and self._tmp is not None
        self._tar.close()
        with open(self._tmp, "rb+") as f:
            os.fsync(f.fileno())
        final = self.out_dir / shard_filename(self.name, self.split, len(self.shards))
        os.replace(self._tmp, final)
        self.shards.append({"name": final.name, "count": self._count, "bytes": final.stat().st_size,
                            "sha256": sha256_file(final)})
        self._tar, self._tmp = None, None

    def write(self, key: str, files: dict[str, bytes]) -> None:
        if self._tar is None:
            self._open()
        for ext, data in files.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        if self._count >= self.shard_size:
            self._finish()

    def close(self) -> list[dict]:
        if self._tar is not None and self._count:
            self._finish()
        elif self._tar is not None:
            self._tar.close()
            self._tmp.unlink(missing_ok=True)
            self._tar = None
        # remove shards of a previous, longer run with the same name
        index = len(self.shards)
        while (stale := self.out_dir / shard_filename(self.name, self.split, index)).exists():
            stale.unlink()
            index += 1
        return self.shards

    def abort(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tmp.unlink(missing_ok=True)
            self._tar = None


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
class _TailTracker:
    """A read-only stream wrapper that remembers how many bytes were read and the last ones (to look at the end of
    a tar archive after tarfile has stopped reading it)."""

    KEEP = 64 * 1024

    def __init__(self, stream: IO[bytes]):
        self.stream = stream
        self.total = 0
        self.tail = b""

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.total += len(data)
        self.tail = (self.tail + data)[-self.KEEP:]
        return data

    def block_at(self, offset: int, size: int = 512) -> bytes | None:
        """The ``size`` bytes at archive ``offset`` when read and still kept, b"" when the stream ended before."""
        if offset + size > self.total:
            return b""
        start = offset - (self.total - len(self.tail))
        return self.tail[start:start + size] if start >= 0 else None


def iter_tar_samples(stream: IO[bytes], where: str, *, require_end: bool = False
                     ) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) for consecutive members of a tar stream grouped by key (text before the first dot).

    require_end: a DataError naming ``where`` and the last whole sample when an uncompressed archive stops without
    its end-of-archive marker (a shard cut short at a member boundary reads like a complete one otherwise)."""
    key, files = None, {}
    tracker = _TailTracker(stream) if require_end else None
    try:
        with tarfile.open(fileobj=tracker or stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                if "." not in base:
                    continue
                k, ext = base.split(".", 1)
                data = tar.extractfile(member).read()
                if k != key:
                    if key is not None:
                        yield key, files
                    key, files = k, {}
                files[ext] = data
            if tracker is not None and getattr(tar.fileobj, "comptype", "tar") == "tar":
                end = tracker.block_at(tar.offset)
                if end is not None and (len(end) < 512 or end.count(0) != 512):
                    last = f"after sample {key!r}" if key is not None else "before its first sample"
                    raise DataError(f"{where}: the shard stops {last} without the tar end-of-archive marker "
                                    f"(cut short?); re-create it, or publish a dataset card with its sample counts")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{where}: damaged shard ({type(exc).__name__}: {exc})") from None
    if key is not None:
        yield key, files


def iter_tar_keys_and_sizes(stream: IO[bytes], where: str) -> Iterator[str]:
    for key, _ in iter_tar_samples(stream, where):
        yield key


# ---------------------------------------------------------------------------------------------
# the dataset card
# ---------------------------------------------------------------------------------------------
def make_card(spec: DatasetSpec, split: str, shards: list[dict], histogram: np.ndarray, *, source: str,
              resize: tuple[int, int] | None, has_instances: bool, skipped: int = 0) -> dict:
    """The dataset card (JSON-serialisable) of one converted split."""
    table = np.asarray(spec.raw_to_class)
    per_class = np.zeros(spec.num_classes, dtype=np.int64)
    valid = table[: len(histogram)] >= 0
    np.add.at(per_class, table[: len(histogram)][valid], histogram[valid])
    total = int(per_class.sum()) or 1
    return {
        "format": CARD_FORMAT,
        "dataset": spec.name,
        "split": split,
        "num_samples": int(sum(s["count"] for s in shards)),
        "shards": shards,
        "classes": [{"id": c.id, "name": c.name, "color": list(c.color)} for c in spec.classes],
        "class_pixel_frequencies": {c.name: round(float(per_class[c.id]) / total, 8) for c in spec.classes},
        "raw_id_pixel_counts": {str(i): int(n) for i, n in enumerate(histogram) if n},
        "has_instances": bool(has_instances),
        "source": source,
        "resize": list(resize) if resize else None,
        "skipped": skipped,
        "tool": f"gensynth {__version__}",
    }


def check_card_shard_names(card: dict, where: str) -> None:
    """DataError naming the card when a shard entry is not a plain file name (a card only names files beside it:
    never a path elsewhere, a URL or a ``pipe:`` command)."""
    for entry in card.get("shards") or []:
        name = entry.get("name") if isinstance(entry, dict) else None
        if (not isinstance(name, str) or not name or "/" in name or "\\" in name or ":" in name
                or name.startswith(".")):
            raise DataError(f"{where}: shard entry {name!r} is not a file name beside the card (a card may not name "
                            f"paths, URLs or commands)")


def write_json_atomic(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
