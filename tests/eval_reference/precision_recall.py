"""(Reference copy, see __init__.) Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019) on feature vectors (e.g. the FID pool3).

Each set's manifold is the union of balls around its points with radius = distance to the point's k-th nearest
neighbour in the same set (k = 3 by default, the point itself excluded). Precision = share of generated points
inside the real manifold; recall = share of real points inside the generated manifold.
"""
from __future__ import annotations

import numpy as np
import torch


def _pairwise(a: torch.Tensor, b: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """(Na, D), (Nb, D) -> (Na, Nb) Euclidean distances, in float64, chunked over rows."""
    return torch.cat([torch.cdist(a[i:i + chunk], b) for i in range(0, a.shape[0], chunk)], 0)


def knn_radii(feats: torch.Tensor, k: int = 3) -> torch.Tensor:
    """(N, D) -> (N,) distance of each point to its k-th nearest other point."""
    if feats.shape[0] <= k:
        raise ValueError(f"need more than k={k} feature vectors for k-NN radii, got {feats.shape[0]}")
    d = _pairwise(feats, feats)
    return d.kthvalue(k + 1, dim=1).values  # index 1 is the point itself (distance 0)


def manifold_coverage(ref: torch.Tensor, ref_radii: torch.Tensor, query: torch.Tensor) -> float:
    """Share of ``query`` points within ``ref_radii[i]`` of some ``ref[i]``."""
    d = _pairwise(query, ref)
    return float((d <= ref_radii.unsqueeze(0)).any(dim=1).double().mean())


def precision_recall(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, k: int = 3) -> dict[str, float]:
    """real: (Nr, D), fake: (Nf, D) -> {"precision": p, "recall": r} in [0, 1]."""
    r = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    if r.dim() != 2 or f.dim() != 2 or r.shape[1] != f.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {tuple(r.shape)} and {tuple(f.shape)}")
    return {"precision": manifold_coverage(r, knn_radii(r, k), f),
            "recall": manifold_coverage(f, knn_radii(f, k), r)}
