"""Fréchet Inception Distance by the protocol of the OASIS paper (pytorch-fid's network and weights).

* Feature network: :class:`~gensynth.eval.inception.FIDInceptionV3`, pool3 (2048-d), weights
  ``pt_inception-2015-12-05-6726825d.pth`` from ``cfg.eval.fid_weights`` or the torch hub cache.
* Images at training resolution, resized bilinearly to 299 inside the network.
* Statistics: mean and (unbiased) covariance accumulated in float64; distance with ``scipy.linalg.sqrtm``.
* Real statistics are cached per dataset / split / resolution / feature-network hash (:class:`StatsCache`).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from gensynth.errors import CheckpointError, ConfigError, MissingWeightsError
from gensynth.eval.inception import FID_WEIGHTS_NAME, FID_WEIGHTS_URL, FIDInceptionV3

FeatureFn = Callable[[Tensor], Tensor]  # image (B, 3, H, W) in [-1, 1] -> (B, D)


# ---------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------
def hub_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights(filename: str, explicit: str | os.PathLike | None, url: str, what: str,
                 setting: str = "") -> Path:
    """Locate a pretrained weights file: ``explicit`` path, else the torch hub cache.

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


def load_fid_inception(weights: str | os.PathLike | None = None, device="cpu") -> FIDInceptionV3:
    """The FID InceptionV3 with the official weights, eval mode, on ``device``."""
    path = find_weights(FID_WEIGHTS_NAME, weights, FID_WEIGHTS_URL, "FID InceptionV3",
                        setting="--set eval.fid_weights=PATH")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read FID weights {path}: {exc}") from exc
    net = FIDInceptionV3()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} is not the pytorch-fid InceptionV3 weights file {FID_WEIGHTS_NAME}: "
                              f"{str(exc).splitlines()[0]}") from None
    return net.eval().to(device)


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


def _sqrtm(m: np.ndarray) -> np.ndarray:
    """The matrix square root; for a matrix scipy cannot take it of (a near-singular product: scipy 1.17 raises
    ``LinAlgError: Internal error in scipy.linalg.sqrtm: -102`` where older versions returned NaN), a NaN matrix, so
    that the caller falls back."""
    from scipy import linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "singular matrix": handled by the caller's offset
        try:
            out = linalg.sqrtm(m)
        except (linalg.LinAlgError, ValueError):
            return np.full_like(m, np.nan)
    return out[0] if isinstance(out, tuple) else out


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr(sqrt(S1 S2)) for covariance matrices, as Tr(sqrt(A S2 A)) with A = sqrt(S1): the same value (S1 S2 is similar
    to A S2 A), computed from symmetric eigen-decompositions, which do not fail on near-singular matrices."""
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = a @ s2 @ a
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)); a small ``eps`` is added to the diagonals when the
    product is singular (and when scipy still cannot take its square root, the trace comes from the symmetric form
    :func:`_trace_sqrt_product`); a negligible imaginary part of the square root is dropped."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"statistics differ in shape: mean {mu1.shape} vs {mu2.shape}, cov {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + offset).dot(s2 + offset))
    if not np.isfinite(covmean).all():  # scipy refused twice: the trace through the symmetric form
        return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * _trace_sqrt_product(s1, s2))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            warnings.warn(f"sqrtm has an imaginary component of {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


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


# ---------------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------------
def fid_feature_network(backend: str = "pytorch-fid", weights: str | None = None, device="cpu") -> nn.Module:
    """The feature network of a FID backend: (B, 3, H, W) in [-1, 1] -> (B, 2048).

    ``pytorch-fid``: gensynth's own FID InceptionV3 with the official weights (the OASIS protocol).
    ``torchmetrics``: torchmetrics' extractor (torch-fidelity port), only if torchmetrics is installed.
    """
    if backend == "pytorch-fid":
        return load_fid_inception(weights, device)
    if backend == "torchmetrics":
        return _torchmetrics_network(weights).to(device)
    raise ConfigError(f"eval.fid_backend = {backend!r} is not known; allowed: pytorch-fid, torchmetrics")


class _TorchmetricsFeatures(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, image: Tensor) -> Tensor:
        x = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # torch-fidelity takes uint8 images
        return self.inner(x).reshape(image.shape[0], -1).float()


def _torchmetrics_network(weights: str | None) -> nn.Module:
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError:
        raise ConfigError("eval.fid_backend = 'torchmetrics' needs the optional packages torchmetrics and "
                          "torch-fidelity (pip install 'torchmetrics[image]'); allowed without them: pytorch-fid") from None
    kwargs = {"feature_extractor_weights_path": weights} if weights else {}
    try:
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"], **kwargs)
    except Exception as exc:
        raise MissingWeightsError(f"torchmetrics could not load its InceptionV3 weights ({exc}); put "
                                  f"weights-inception-2015-12-05-6726825d.pth in {hub_checkpoint_dir()}") from exc
    return _TorchmetricsFeatures(net.eval())
