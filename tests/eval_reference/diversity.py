"""(Reference copy, see __init__.) Diversity of multi-modal samples: mean pairwise MS-SSIM (lower = more diverse) and LPIPS (higher = more diverse).

MS-SSIM (Wang et al. 2003), written for gensynth: images mapped to [0, 1] (data range 1), 11x11 Gaussian window
(sigma 1.5), K1 = 0.01, K2 = 0.03, scale weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), 2x2 average pooling
between scales, negative contrast-structure terms clamped to 0. Small images cannot host 5 scales of an 11-pixel
window: the number of scales is reduced so that the coarsest scale is at least 11 pixels and the weights of
the scales used are renormalised to sum to 1 (recorded as ``ms_ssim_scales``).

LPIPS (Zhang et al. 2018), v0.1: ImageNet backbone (AlexNet or VGG16, torchvision layout) scaled input, five
ReLU feature maps unit-normalised over channels, squared differences weighted by learned 1x1 "linear" layers,
averaged spatially and summed. Weights come from local files only (see :func:`lpips_weight_files`).
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensynth.errors import CheckpointError, ConfigError

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW, SIGMA, K1, K2 = 11, 1.5, 0.01, 0.03


# ---------------------------------------------------------------------------------------------
# MS-SSIM
# ---------------------------------------------------------------------------------------------
def _gauss_window(size: int, sigma: float, channels: int, device, dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def _ssim_terms(x: Tensor, y: Tensor, win: Tensor) -> tuple[Tensor, Tensor]:
    """(B, C, H, W) in [0, 1] -> per-image luminance*cs (SSIM) and cs, each (B,), 'valid' filtering."""
    c = x.shape[1]
    c1, c2 = K1 ** 2, K2 ** 2
    mu_x, mu_y = F.conv2d(x, win, groups=c), F.conv2d(y, win, groups=c)
    sxx = F.conv2d(x * x, win, groups=c) - mu_x ** 2
    syy = F.conv2d(y * y, win, groups=c) - mu_y ** 2
    sxy = F.conv2d(x * y, win, groups=c) - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
    return (lum * cs).flatten(1).mean(1), cs.flatten(1).mean(1)


def ms_ssim_scales(height: int, width: int, max_scales: int = 5) -> int:
    """How many scales fit: the coarsest one must be at least the window size."""
    side = min(height, width)
    if side < WINDOW:
        raise ValueError(f"MS-SSIM needs images of at least {WINDOW}x{WINDOW} pixels, got {height}x{width}")
    return max(1, min(max_scales, 1 + int(math.floor(math.log2(side / WINDOW)))))


def ms_ssim(x: Tensor, y: Tensor, scales: int | None = None) -> Tensor:
    """x, y: (B, 3, H, W) in [-1, 1] -> (B,) MS-SSIM in [0, 1] (1 for identical images)."""
    if x.shape != y.shape:
        raise ValueError(f"MS-SSIM inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    x = ((x.double() + 1) / 2).clamp(0, 1)
    y = ((y.double() + 1) / 2).clamp(0, 1)
    m = scales or ms_ssim_scales(x.shape[-2], x.shape[-1])
    w = torch.tensor(MS_SSIM_WEIGHTS[:m], dtype=torch.float64, device=x.device)
    w = w / w.sum()
    win = _gauss_window(WINDOW, SIGMA, x.shape[1], x.device, x.dtype)
    factors = []
    for j in range(m):
        ssim, cs = _ssim_terms(x, y, win)
        factors.append((ssim if j == m - 1 else cs).clamp(min=0))
        if j < m - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stacked = torch.stack(factors, 1)  # (B, m)
    return torch.prod(stacked ** w, dim=1).float()


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
    # net: (torchvision weights file, url, indices of the ReLU outputs tapped, channels)
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
             (1, 4, 7, 9, 11), (64, 192, 384, 256, 256)),
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
            (3, 8, 15, 22, 29), (64, 128, 256, 512, 512)),
}
LPIPS_LINEAR_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/{net}.pth"
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def lpips_linear_filename(net: str) -> str:
    return f"lpips_v0.1_{net}.pth"


class LPIPS(nn.Module):
    """LPIPS distance: two (B, 3, H, W) images in [-1, 1] -> (B,) distances (0 for identical images).

    ``net``: "alex" or "vgg". Build with :meth:`pretrained` for real numbers; the bare constructor leaves
    random weights (tests, or to load your own).
    """

    def __init__(self, net: str = "alex"):
        super().__init__()
        import torchvision

        if net not in LPIPS_BACKBONES:
            raise ConfigError(f"LPIPS net {net!r} is not supported; allowed: {', '.join(LPIPS_BACKBONES)}")
        self.net_name = net
        _, _, taps, channels = LPIPS_BACKBONES[net]
        builder = torchvision.models.alexnet if net == "alex" else torchvision.models.vgg16
        self.features = builder(weights=None).features[: taps[-1] + 1]
        self.taps = taps
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def load_files(self, backbone: str | Path, linear: str | Path) -> None:
        """backbone: torchvision state dict (``features.N.weight`` ...); linear: LPIPS v0.1 (``linN.model.1.weight``)."""
        bb = torch.load(backbone, map_location="cpu", weights_only=True)
        feats = {k[len("features."):]: v for k, v in bb.items() if k.startswith("features.")}
        own = self.features.state_dict()
        missing = [k for k in own if k not in feats]
        if missing:
            raise CheckpointError(f"{backbone} is not a torchvision {self.net_name} state dict: missing {missing[:3]}")
        self.features.load_state_dict({k: feats[k] for k in own})
        lin = torch.load(linear, map_location="cpu", weights_only=True)
        try:
            for i, conv in enumerate(self.lins):
                conv.weight.data.copy_(lin[f"lin{i}.model.1.weight"])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{linear} is not an LPIPS v0.1 {self.net_name} linear-layer file: {exc}") from None

    def _taps(self, x: Tensor) -> list[Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        fx = self._taps((x - self.shift) / self.scale)
        fy = self._taps((y - self.shift) / self.scale)
        total = 0
        for a, b, lin in zip(fx, fy, self.lins):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((a - b) ** 2).mean(dim=(1, 2, 3))
        return total
