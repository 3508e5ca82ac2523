"""Per-batch class-balancing weights of the OASIS (N+1)-class loss, shared by every objective built on it."""
from __future__ import annotations

import torch
from torch import Tensor


def class_balancing_weights(label_ids: Tensor, num_classes: int, dontcare: int | None = 0) -> Tensor:
    """Per-pixel weights (B, H, W) as the official OASIS code computes them, per batch.

    count_c = pixels of class c in the batch (count of ``dontcare`` forced to 0); K = classes with count > 0;
    w_c = B*H*W / (K * count_c); the don't-care weight is 0. Example: ids [[0,1,1,1],[2,2,2,2]] ->
    [[0, 4/3, 4/3, 4/3], [1, 1, 1, 1]]. A batch made only of don't-care pixels gets all-zero weights.
    """
    counts = torch.bincount(label_ids.reshape(-1), minlength=num_classes).to(torch.float32)
    if dontcare is not None:
        counts[dontcare] = 0
    present = counts > 0
    k = present.sum()  # stays on the device: no host-device synchronisation in the training step
    weights = torch.where(present, label_ids.numel() / (k.clamp_min(1) * counts.clamp_min(1)), 0.0)
    return weights[label_ids]
