"""Mean intersection-over-union from a confusion matrix, with an ignore id and an optional id mapping.

Protocol: predictions and ground truth are model class ids (B, H, W); when the dataset defines ``eval_ids``
(e.g. Cityscapes' 19 trainIds) both are mapped through it first and 255 is ignored; otherwise the don't-care
class is ignored. IoU of a class = TP / (TP + FP + FN); a class absent from both ground truth and predictions has
IoU NaN and the mean is over the other classes. This is the convention of the Cityscapes scripts and mmsegmentation,
including that a valid ground-truth pixel predicted as an ignored id is a false negative of its class.

Why not torchmetrics' ``JaccardIndex``: on the same valid predictions it gives the same per-class IoU and the same
macro mean (tests/test_eval_metrics.py), but it reports an absent class as 0 instead of NaN and fails on a
prediction of the ignore id, which segmenters with an ignore channel produce; so gensynth keeps this small
confusion matrix, which also merges across processes by addition.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

IGNORE = 255


@dataclass
class ConfusionMatrix:
    """Accumulates a (C, C) confusion matrix: rows = ground truth, columns = prediction."""

    num_classes: int
    ignore: int = IGNORE
    matrix: np.ndarray = field(init=False)
    missed: np.ndarray = field(init=False)  # (C,) valid pixels predicted as ignored/invalid (false negatives)

    def __post_init__(self):
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.missed = np.zeros(self.num_classes, dtype=np.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """pred, target: (B, H, W) integer ids in [0, C) or ``ignore``."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(target.shape)} differ in shape")
        p, t = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
        keep = (t != self.ignore) & (t >= 0) & (t < self.num_classes)
        p, t = p[keep], t[keep]
        p = torch.where((p >= 0) & (p < self.num_classes), p, torch.zeros_like(p) - 1)
        wrong = p < 0  # an ignored/invalid prediction on a valid pixel counts as a miss (FN)
        counts = torch.bincount(t[~wrong] * self.num_classes + p[~wrong], minlength=self.num_classes ** 2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes).numpy()
        if wrong.any():
            self.missed += np.bincount(t[wrong].numpy(), minlength=self.num_classes)

    def iou(self) -> np.ndarray:
        """(C,) per-class IoU; NaN for classes absent from both ground truth and prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        fn = self.matrix.sum(1) - tp + self.missed
        fp = self.matrix.sum(0) - tp
        union = tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum() + self.missed.sum()
        return float(np.diag(self.matrix).sum() / total) if total else float("nan")


def eval_id_mapping(num_model_classes: int, eval_ids=None, dontcare: int | None = None) -> tuple[Tensor, int]:
    """Table (num_model_classes,) model class -> evaluation id (``IGNORE`` = ignored) and the evaluation id count.

    With ``eval_ids`` (dataset spec) the table is that; otherwise the identity with ``dontcare`` ignored.
    """
    if eval_ids is not None:
        table = torch.as_tensor(np.asarray(eval_ids), dtype=torch.long)
        if table.numel() != num_model_classes:
            raise ValueError(f"eval_ids has {table.numel()} entries for {num_model_classes} model classes")
        valid = table[table != IGNORE]
        return table, int(valid.max()) + 1 if valid.numel() else 0
    table = torch.arange(num_model_classes)
    if dontcare is not None:
        table[dontcare] = IGNORE
    return table, num_model_classes


def apply_mapping(ids: Tensor, table: Tensor) -> Tensor:
    """(B, H, W) model ids -> (B, H, W) evaluation ids through ``table``."""
    return table.to(ids.device)[ids.long().clamp(0, table.numel() - 1)]
