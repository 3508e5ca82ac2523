"""Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019) on feature vectors (the FID pool3), by
torch-fidelity (``prc_features_to_metric``).

Each set's manifold is the union of balls around its points with radius = distance to the point's k-th nearest
neighbour in the same set (k = 3, the point itself excluded; a point on a ball's surface is inside). Precision =
share of generated points inside the real manifold; recall = share of real points inside the generated manifold.
"""
from __future__ import annotations

import numpy as np
import torch

from gensynth.eval.deps import optional_import


def precision_recall(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, k: int = 3) -> dict[str, float]:
    """real: (Nr, D), fake: (Nf, D) -> {"precision": p, "recall": r} in [0, 1]."""
    metric_prc = optional_import("torch_fidelity.metric_prc", "prec-recall")
    r = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    if r.dim() != 2 or f.dim() != 2 or r.shape[1] != f.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {tuple(r.shape)} and {tuple(f.shape)}")
    if min(len(r), len(f)) <= k:
        raise ValueError(f"need more than k={k} feature vectors in each set for k-NN radii, got {len(r)} real and "
                         f"{len(f)} generated")
    # torch-fidelity's convention: features_1 = generated, features_2 = real
    out = metric_prc.prc_features_to_metric(f, r, prc_neighborhood=k, verbose=False)
    return {"precision": float(out[metric_prc.KEY_METRIC_PRECISION]),
            "recall": float(out[metric_prc.KEY_METRIC_RECALL])}
