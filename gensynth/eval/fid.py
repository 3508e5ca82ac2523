"""Fréchet Inception Distance by the protocol of the OASIS paper, on maintained libraries.

* Feature network: pytorch-fid's ``InceptionV3`` (the network the OASIS paper used), pool3 (2048-d), weights
  ``pt_inception-2015-12-05-6726825d.pth`` read from a local file (``cfg.eval.fid_weights`` or the torch hub cache)
  with ``torch.load(weights_only=True)``; it is never downloaded. Images at training resolution are resized
  bilinearly to 299 inside the network, as pytorch-fid does.
* Statistics: mean and (unbiased) covariance accumulated in float64 (:class:`FeatureStats`).
* Distance: torch-fidelity's ``fid_statistics_to_metric`` (trace of the square root from the eigenvalues of
  S1 S2): the same value as pytorch-fid's ``scipy.linalg.sqrtm`` route to 1e-10 relative, 5-11x faster at 2048-d
  (benchmarks/eval_metrics.py).
* Real statistics are cached per dataset / split / resolution / feature-network hash (:class:`StatsCache`).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from unittest import mock

import numpy as np
import torch
from torch import Tensor, nn

from gensynth.errors import CheckpointError, ConfigError, MissingWeightsError
from gensynth.eval.deps import optional_import

FeatureFn = Callable[[Tensor], Tensor]  # image (B, 3, H, W) in [-1, 1] -> (B, D)

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_NAME}"
FID_FEATURE_DIM = 2048


# ---------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------
def hub_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights(filename: str, explicit: str | os.PathLike | None, url: str, what: str,
                 setting: str = "") -> Path:
    """Locate a pretrained weights file: ``explicit`` path (a file, or a directory holding ``filename``), else the
    torch hub cache.

    Raises MissingWeightsError naming the file, where it was looked for, where to put it and its URL.
    """
    if explicit:
        p = Path(explicit).expanduser()
        if p.is_dir():
            p = p / filename
        if p.is_file():
            return p
        looked = [str(p)]
    else:
        looked = []
    cached = hub_checkpoint_dir() / filename
    if cached.is_file() and not explicit:
        return cached
    if not explicit:
        looked.append(str(cached))
    hint = f" or pass its path with {setting}" if setting else ""
    raise MissingWeightsError(
        f"{what} weights file {filename!r} not found (looked in: {', '.join(looked)}). gensynth does not download "
        f"it: fetch {url} on a machine with internet and copy it to {cached}{hint}.")


def fid_weights_path(weights: str | os.PathLike | None) -> Path:
    """Where the FID InceptionV3 weights are (MissingWeightsError with what to do when they are not)."""
    return find_weights(FID_WEIGHTS_NAME, weights, FID_WEIGHTS_URL, "FID InceptionV3",
                        setting="--set eval.fid_weights=PATH")


class FIDFeatures(nn.Module):
    """pytorch-fid's InceptionV3 as a feature function: image (B, 3, H, W) in [-1, 1] -> pool3 features (B, 2048).

    The wrapped network takes images in [0, 1] and resizes them bilinearly to 299x299 itself (``resize_input``,
    ``normalize_input``: pytorch-fid's defaults, so numbers follow pytorch-fid on the same pixels).
    """

    feature_dim = FID_FEATURE_DIM

    def __init__(self, inception: nn.Module):
        super().__init__()
        self.inception = inception

    def forward(self, image: Tensor) -> Tensor:
        x = ((image.float() + 1) / 2).clamp(0, 1)
        return self.inception(x)[0].flatten(1)


def build_pytorch_fid_inception(state: dict[str, Tensor]) -> nn.Module:
    """pytorch-fid's ``InceptionV3([3])`` with ``state`` (a pt_inception-2015-12-05 state dict) loaded strictly.

    pytorch-fid fetches its weights by URL while building the network; that single call is answered with
    ``state`` instead, so nothing is downloaded and the weights come from a file gensynth read itself.
    """
    pfi = optional_import("pytorch_fid.inception", "fid")

    def local_weights(url, *args, **kwargs):
        if not str(url).endswith(FID_WEIGHTS_NAME):
            raise RuntimeError(f"pytorch-fid asked for weights from {url}; gensynth provides only {FID_WEIGHTS_NAME}")
        return state

    with mock.patch.object(pfi, "load_state_dict_from_url", local_weights):
        return pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[FID_FEATURE_DIM]])


def load_fid_inception(weights: str | os.PathLike | None = None, device="cpu") -> FIDFeatures:
    """The FID feature network with the official weights from a local file, eval mode, on ``device``."""
    path = fid_weights_path(weights)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read FID weights {path}: {exc}") from exc
    try:
        net = build_pytorch_fid_inception(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} is not the pytorch-fid InceptionV3 weights file {FID_WEIGHTS_NAME}: "
                              f"{str(exc).splitlines()[0]}") from None
    return FIDFeatures(net).eval().to(device)


def network_hash(net: nn.Module) -> str:
    """A short hash of a feature network's class and weights (part of the real-statistics cache key)."""
    h = hashlib.sha256(type(net).__qualname__.encode())
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# statistics and the distance
# ---------------------------------------------------------------------------------------------
class FeatureStats:
    """Running sums of features (float64) -> mean (D,), covariance (D, D), and optionally the raw features."""

    def __init__(self, keep_features: bool = False):
        self.n = 0
        self.sum: np.ndarray | None = None
        self.outer: np.ndarray | None = None
        self.keep = keep_features
        self.features: list[np.ndarray] = []

    def update(self, feats: Tensor | np.ndarray) -> None:
        """feats: (B, D)."""
        f = feats.detach().to("cpu", torch.float64).numpy() if isinstance(feats, Tensor) else np.asarray(feats, np.float64)
        if f.ndim != 2:
            raise ValueError(f"features must be (B, D), got shape {f.shape}")
        if self.sum is None:
            self.sum = np.zeros(f.shape[1])
            self.outer = np.zeros((f.shape[1], f.shape[1]))
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f
        if self.keep:
            self.features.append(f.astype(np.float32))

    def merge(self, other: "FeatureStats") -> None:
        if other.n == 0:
            return
        if self.sum is None:
            self.sum, self.outer = other.sum.copy(), other.outer.copy()
        else:
            self.sum += other.sum
            self.outer += other.outer
        self.n += other.n
        self.features += other.features

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.n}")
        mu = self.sum / self.n
        cov = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, cov

    def all_features(self) -> np.ndarray:
        return np.concatenate(self.features, 0) if self.features else np.zeros((0, 0), np.float32)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), by torch-fidelity (float64); NaN when a statistic is not
    finite (reported as n/a, never an exception in the middle of an evaluation)."""
    metric_fid = optional_import("torch_fidelity.metric_fid", "fid")
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"statistics differ in shape: mean {mu1.shape} vs {mu2.shape}, cov {s1.shape} vs {s2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, s1, s2)):
        return float("nan")  # images that were not finite (e.g. an untrained generator's eval-mode output): no FID
    out = metric_fid.fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, verbose=False)
    return float(out[metric_fid.KEY_METRIC_FID])


# ---------------------------------------------------------------------------------------------
# caching real statistics
# ---------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    return Path(os.environ.get("GENSYNTH_CACHE_DIR", Path.home() / ".cache" / "gensynth")) / "fid-stats"


@dataclass
class StatsKey:
    """What real statistics depend on: dataset, split, resolution (H, W), feature network, sample limit."""

    dataset: str
    split: str
    size: tuple[int, int]
    net: str
    limit: int | None = None

    def filename(self) -> str:
        lim = f"-n{self.limit}" if self.limit else ""
        return f"{self.dataset}-{self.split}-{self.size[0]}x{self.size[1]}{lim}-{self.net}.npz"


class StatsCache:
    """Real-image statistics (mu, sigma[, features]) stored as ``.npz`` files keyed by :class:`StatsKey`."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory) if directory else default_cache_dir()

    def path(self, key: StatsKey) -> Path:
        return self.directory / key.filename()

    def load(self, key: StatsKey) -> dict[str, np.ndarray] | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception:  # a damaged cache file is recomputed, not fatal
            warnings.warn(f"ignoring unreadable FID statistics cache {p}")
            return None

    def save(self, key: StatsKey, **arrays: np.ndarray) -> Path:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, p)
        return p


def fid_feature_network(backend: str = "pytorch-fid", weights: str | None = None, device="cpu") -> nn.Module:
    """The FID feature network: (B, 3, H, W) in [-1, 1] -> (B, 2048). ``backend``: only ``pytorch-fid``."""
    if backend != "pytorch-fid":
        raise ConfigError(f"eval.fid_backend = {backend!r} is not known; allowed: pytorch-fid")
    return load_fid_inception(weights, device)
