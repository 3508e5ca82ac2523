"""The contract of a dataset plugin: its spec (classes, raw-id table, sizes, splits, default options) and the samples
its reader yields. Used by ``gensynth plugins check`` and :mod:`gensynth.testing`."""
from __future__ import annotations

import io
import itertools

import numpy as np

from gensynth.contracts import ContractError, PartRef, describe
from gensynth.interfaces import RawSample


def check_dataset_spec(spec, ref: PartRef) -> str:
    """The static contract of a DatasetSpec (classes, raw-id table, don't-care, size, splits, default options)."""
    from gensynth.config import check_key
    from gensynth.interfaces import ClassInfo

    classes = list(spec.classes)
    if not classes:
        raise ContractError(f"{ref}: expected a non-empty classes list; got none")
    for i, c in enumerate(classes):
        if not isinstance(c, ClassInfo) or c.id != i:
            raise ContractError(f"{ref}: expected classes[{i}] to be ClassInfo(id={i}, name, color); got {c!r}")
    table = np.asarray(spec.raw_to_class)
    if table.ndim != 1 or not np.issubdtype(table.dtype, np.integer):
        raise ContractError(f"{ref}: expected raw_to_class to be a 1-D integer numpy array; got {table.dtype} "
                            f"of shape {table.shape}")
    if table.size and (table.min() < -1 or table.max() >= len(classes)):
        raise ContractError(f"{ref}: expected raw_to_class values in -1..{len(classes) - 1}; got "
                            f"{int(table.min())}..{int(table.max())}")
    if not (table >= 0).any():
        raise ContractError(f"{ref}: expected raw_to_class to map at least one raw id to a class; got none")
    if spec.dontcare is not None and not 0 <= spec.dontcare < len(classes):
        raise ContractError(f"{ref}: expected dontcare None or a class index 0..{len(classes) - 1}; "
                            f"got {spec.dontcare}")
    size = tuple(spec.default_size)
    if len(size) != 2 or min(size) < 8:
        raise ContractError(f"{ref}: expected default_size (H, W) of at least 8x8; got {size}")
    if not spec.splits or not all(isinstance(x, str) for x in spec.splits):
        raise ContractError(f"{ref}: expected splits to be a tuple of split names; got {spec.splits!r}")
    for key in spec.default_options():
        try:
            check_key(key)
        except Exception as exc:
            raise ContractError(f"{ref}: default_options() key {key!r} is not a configuration key: {exc}") from None
    eval_ids = spec.eval_ids
    if eval_ids is not None and len(eval_ids) != len(classes):
        raise ContractError(f"{ref}: expected eval_ids to have one entry per class ({len(classes)}); "
                            f"got {len(eval_ids)}")
    return f"{len(classes)} classes, raw ids 0..{table.size - 1}, dontcare {spec.dontcare}, size {size}"


def check_raw_samples(spec, root: str | None, split: str, ref: PartRef, limit: int = 2) -> str:
    """The first ``limit`` samples ``iter_raw(root, split)`` yields: RawSample with a dot-free key, a decodable
    jpg/png image, a 2-D integer label of the image's size whose raw ids are in ``raw_to_class``."""
    from PIL import Image

    kwargs = {"samples": limit, "size": (32, 32)} if getattr(spec, "procedural", False) else {}
    table = np.asarray(spec.raw_to_class)
    seen = 0
    for sample in itertools.islice(spec.iter_raw(root, split, **kwargs), limit):
        if not isinstance(sample, RawSample):
            raise ContractError(f"{ref}: expected iter_raw to yield gensynth.interfaces.RawSample; got "
                                f"{describe(sample)}")
        where = f"sample {sample.key!r} ({sample.source or 'no source'})"
        if not sample.key or "." in sample.key:
            raise ContractError(f"{ref}: expected a non-empty dot-free key; got {sample.key!r}")
        if sample.image_ext not in ("jpg", "png"):
            raise ContractError(f"{ref}: {where}: expected image_ext 'jpg' or 'png'; got {sample.image_ext!r}")
        try:
            w, h = Image.open(io.BytesIO(sample.image_bytes)).size
        except Exception as exc:
            raise ContractError(f"{ref}: {where}: expected image_bytes to be the image file's bytes; they do not "
                                f"decode ({exc})") from None
        label = np.asarray(sample.label)
        if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer) or label.shape != (h, w):
            raise ContractError(f"{ref}: {where}: expected label as an (H, W) integer array of the image's size "
                                f"({h}, {w}); got {label.dtype} of shape {label.shape}")
        bad = np.unique(label[(label < 0) | (label >= table.size)]).tolist()
        if not bad:
            ids = np.unique(label)
            bad = ids[table[ids] < 0].tolist()
        if bad:
            raise ContractError(f"{ref}: {where}: raw label ids {bad[:8]} are not in raw_to_class")
        if sample.instance is not None and np.asarray(sample.instance).shape != (h, w):
            raise ContractError(f"{ref}: {where}: expected instance of shape ({h}, {w}); got "
                                f"{np.asarray(sample.instance).shape}")
        seen += 1
    if not seen:
        raise ContractError(f"{ref}: expected iter_raw({root!r}, {split!r}) to yield samples; got none")
    return f"{seen} samples of split {split!r}"
