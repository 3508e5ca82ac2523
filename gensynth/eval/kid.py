"""Kernel Inception Distance (Bińkowski et al., ICLR 2018) on the FID features, by torch-fidelity.

Unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3, averaged over random subsets; the
standard parameters of torch-fidelity and torchmetrics: 100 subsets of 1000 samples. A subset cannot hold more
samples than either set has, so the subset size is clipped to the smaller set (reported in the protocol).
"""
from __future__ import annotations

import numpy as np
import torch

from gensynth.eval.deps import optional_import

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def kid_subset_size(n_real: int, n_fake: int, subset_size: int = KID_SUBSET_SIZE) -> int:
    """The subset size used: ``subset_size`` clipped to the smaller set."""
    return min(subset_size, n_real, n_fake)


def kernel_inception_distance(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, *,
                              subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
                              seed: int = 0) -> dict[str, float]:
    """real: (Nr, D), fake: (Nf, D) -> {"kid": mean over subsets, "kid_std": their standard deviation}."""
    metric_kid = optional_import("torch_fidelity.metric_kid", "kid")
    r = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    if r.dim() != 2 or f.dim() != 2 or r.shape[1] != f.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {tuple(r.shape)} and {tuple(f.shape)}")
    size = kid_subset_size(len(r), len(f), subset_size)
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples in each set, got {len(r)} real and {len(f)} generated")
    out = metric_kid.kid_features_to_metric(f, r, kid_subsets=subsets, kid_subset_size=size, rng_seed=seed,
                                            verbose=False)
    return {"kid": out[metric_kid.KEY_METRIC_KID_MEAN], "kid_std": out[metric_kid.KEY_METRIC_KID_STD]}
