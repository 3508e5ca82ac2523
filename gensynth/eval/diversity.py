"""Diversity of multi-modal samples, as the OASIS paper reports it: for each label map several samples, and the
mean over all pairs of

* MS-SSIM (lower = more diverse): images mapped to [0, 1] (data range 1), 11x11 Gaussian window (sigma 1.5),
  K1 = 0.01, K2 = 0.03, scale weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), negative terms clamped to 0.
  Needs no weights. Images whose short side exceeds 160 px (the paper's sizes) use pytorch-msssim's ``ms_ssim``
  (window-valid statistics, as TensorFlow and the former gensynth code; separable filters: the fastest measured).
  pytorch-msssim refuses smaller images; for those the number of scales is reduced so that the coarsest scale is
  at least 11 pixels, the weights of the scales used are renormalised to sum to 1 (``ms_ssim_scales``), and
  torchmetrics' ``multiscale_structural_similarity_index_measure`` computes it (it averages the coarsest scale's
  SSIM over a reflect-padded map, so small-image values differ from window-valid ones by up to ~0.05).
* LPIPS v0.1 (higher = more diverse), the ``lpips`` package: its linear layers ship inside the package; the
  torchvision backbone (AlexNet or VGG16) is read from a local file (see :func:`load_lpips`), never downloaded.
"""
from __future__ import annotations

import itertools
import math
import os
import re
import warnings

import torch
from torch import Tensor, nn

from gensynth.errors import CheckpointError, ConfigError
from gensynth.eval.deps import optional_import
from gensynth.eval.fid import find_weights

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW, SIGMA, K1, K2 = 11, 1.5, 0.01, 0.03


# ---------------------------------------------------------------------------------------------
# MS-SSIM
# ---------------------------------------------------------------------------------------------
def ms_ssim_scales(height: int, width: int, max_scales: int = 5) -> int:
    """How many scales fit: the coarsest one must be at least the window size."""
    side = min(height, width)
    if side < WINDOW:
        raise ValueError(f"MS-SSIM needs images of at least {WINDOW}x{WINDOW} pixels, got {height}x{width}")
    return max(1, min(max_scales, 1 + int(math.floor(math.log2(side / WINDOW)))))


def ms_ssim_betas(scales: int) -> tuple[float, ...]:
    """The first ``scales`` MS-SSIM weights, renormalised to sum to 1."""
    w = MS_SSIM_WEIGHTS[:scales]
    return tuple(v / sum(w) for v in w)


#: pytorch-msssim needs the short side to exceed (window - 1) * 2^4 (five scales)
PYTORCH_MSSSIM_MIN_SIDE = (WINDOW - 1) * 2 ** 4 + 1


def ms_ssim_library(height: int, width: int) -> str:
    """Which library computes MS-SSIM at this size (see the module text)."""
    return "pytorch-msssim" if min(height, width) >= PYTORCH_MSSSIM_MIN_SIDE else "torchmetrics"


def ms_ssim(x: Tensor, y: Tensor, scales: int | None = None) -> Tensor:
    """x, y: (B, 3, H, W) in [-1, 1] -> (B,) MS-SSIM in [0, 1] (1 for identical images)."""
    if x.shape != y.shape:
        raise ValueError(f"MS-SSIM inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    m = scales or ms_ssim_scales(x.shape[-2], x.shape[-1])
    a = ((x.double() + 1) / 2).clamp(0, 1)
    b = ((y.double() + 1) / 2).clamp(0, 1)
    if m == 5 and ms_ssim_library(*x.shape[-2:]) == "pytorch-msssim":
        msssim = optional_import("pytorch_msssim", "ms-ssim")
        return msssim.ms_ssim(a, b, data_range=1.0, size_average=False, win_size=WINDOW, win_sigma=SIGMA,
                              weights=list(MS_SSIM_WEIGHTS), K=(K1, K2)).float()
    image = optional_import("torchmetrics.functional.image", "ms-ssim")
    out = image.multiscale_structural_similarity_index_measure(
        a, b, gaussian_kernel=True, sigma=SIGMA, kernel_size=WINDOW, data_range=1.0, k1=K1, k2=K2,
        betas=ms_ssim_betas(m), normalize="relu", reduction="none")
    return out.float()


def mean_pairwise(samples: Tensor, fn) -> float:
    """samples: (K, 3, H, W) several samples of one label map -> mean of fn(a, b) over the K(K-1)/2 pairs."""
    k = samples.shape[0]
    if k < 2:
        raise ValueError(f"diversity needs at least 2 samples per label map, got {k}")
    pairs = list(itertools.combinations(range(k), 2))
    a = samples[[i for i, _ in pairs]]
    b = samples[[j for _, j in pairs]]
    return float(fn(a, b).mean())


# ---------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------
LPIPS_BACKBONES = {
    # net: (torchvision weights file, its URL)
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
}


def lpips_backbone_path(net: str, weights_dir: str | os.PathLike | None):
    """Where the torchvision backbone of LPIPS ``net`` is (MissingWeightsError with what to do when it is not)."""
    if net not in LPIPS_BACKBONES:
        raise ConfigError(f"eval.lpips_net = {net!r} is not supported; allowed: {', '.join(LPIPS_BACKBONES)}")
    name, url = LPIPS_BACKBONES[net]
    return find_weights(name, weights_dir, url, f"LPIPS {net} backbone (torchvision)", "--set eval.lpips_weights=DIR")


class LPIPSDistance(nn.Module):
    """The ``lpips`` package's LPIPS as a distance: two (B, 3, H, W) images in [-1, 1] -> (B,) (0 when identical)."""

    def __init__(self, model: nn.Module, net: str):
        super().__init__()
        self.model = model
        self.net_name = net

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.model(x, y).flatten()


def lpips_model(net: str = "alex") -> nn.Module:
    """``lpips.LPIPS`` v0.1 with the package's linear layers and a randomly initialised backbone (no download)."""
    lpips = optional_import("lpips", "lpips")
    if net not in LPIPS_BACKBONES:
        raise ConfigError(f"eval.lpips_net = {net!r} is not supported; allowed: {', '.join(LPIPS_BACKBONES)}")
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False).eval()


def load_backbone(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Copy a torchvision AlexNet/VGG16 state dict (``features.N.*``) into an ``lpips.LPIPS`` backbone
    (``net.sliceK.N.*``); every backbone tensor must be present."""
    own = {k: v for k, v in model.state_dict().items() if k.startswith("net.")}
    new = {}
    for key in own:
        tv_key = re.sub(r"^net\.slice\d+\.", "features.", key)
        if tv_key not in state:
            raise CheckpointError(f"{source} is not a torchvision backbone state dict for LPIPS: missing {tv_key!r}")
        if tuple(state[tv_key].shape) != tuple(own[key].shape):
            raise CheckpointError(f"{source}: {tv_key} has shape {tuple(state[tv_key].shape)}, LPIPS expects "
                                  f"{tuple(own[key].shape)} (wrong backbone for eval.lpips_net?)")
        new[key] = state[tv_key]
    model.load_state_dict(new, strict=False)


def load_lpips(net: str = "alex", weights_dir: str | os.PathLike | None = None, device="cpu") -> LPIPSDistance:
    """LPIPS with its backbone read from ``weights_dir`` (a file or directory) or the torch hub cache."""
    path = lpips_backbone_path(net, weights_dir)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read LPIPS backbone weights {path}: {exc}") from exc
    model = lpips_model(net)
    load_backbone(model, state, str(path))
    return LPIPSDistance(model, net).eval().to(device)
