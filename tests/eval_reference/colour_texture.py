"""(Reference copy, see __init__.) Per-class colour and texture statistics of generated vs real images (the OASIS paper's analysis).

For every semantic class, pixels of that class are pooled over the whole set (real images with their label
maps; generated images with the same label maps) into

* colour: three 1-D histograms of CIE-LAB (D65) channels: L in [0, 100] (50 bins), a and b in [-128, 128]
  (64 bins each). Real and generated histograms are compared with the 1-D earth mover's distance
  (sum of |CDF_real - CDF_fake| x bin width, in LAB units), averaged over the three channels.
* texture: a 256-bin histogram of 8-neighbour, radius-1 local binary patterns on the grey image
  (0.299 R + 0.587 G + 0.114 B; bit i set when neighbour i >= centre; edge pixels use replicated borders),
  compared with the chi-squared distance 0.5 sum (p - q)^2 / (p + q) (0 = equal, 1 = disjoint).

Both distances are averaged over the classes with at least ``min_pixels`` pixels in both sets (the don't-care
class excluded). Lower is better.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

LAB_RANGES = ((0.0, 100.0, 50), (-128.0, 128.0, 64), (-128.0, 128.0, 64))  # (lo, hi, bins) per channel
LBP_BINS = 256
_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                     [0.212671, 0.715160, 0.072169],
                     [0.019334, 0.119193, 0.950227]], dtype=torch.float64)
_WHITE = torch.tensor([0.950456, 1.0, 1.088754], dtype=torch.float64)


def rgb_to_lab(image: Tensor) -> Tensor:
    """(B, 3, H, W) sRGB in [-1, 1] -> (B, 3, H, W) CIE-LAB (D65) in float64."""
    rgb = ((image.double() + 1) / 2).clamp(0, 1)
    lin = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = torch.einsum("ij,bjhw->bihw", _XYZ.to(lin.device), lin) / _WHITE.to(lin.device).view(1, 3, 1, 1)
    d = 6 / 29
    f = torch.where(xyz > d ** 3, xyz.clamp(min=1e-12) ** (1 / 3), xyz / (3 * d * d) + 4 / 29)
    L = 116 * f[:, 1] - 16
    a = 500 * (f[:, 0] - f[:, 1])
    b = 200 * (f[:, 1] - f[:, 2])
    return torch.stack([L, a, b], 1)


def lbp_codes(image: Tensor) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W) int64 LBP codes in [0, 255]."""
    rgb = ((image.double() + 1) * 127.5).clamp(0, 255)
    grey = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]).unsqueeze(1)
    padded = torch.nn.functional.pad(grey, (1, 1, 1, 1), mode="replicate")
    h, w = grey.shape[-2:]
    codes = torch.zeros_like(grey, dtype=torch.long)
    offsets = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]  # clockwise from top-left
    for bit, (dy, dx) in enumerate(offsets):
        nb = padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        codes |= (nb >= grey).long() << bit
    return codes[:, 0]


def emd_1d(p: np.ndarray, q: np.ndarray, bin_width: float) -> float:
    """Earth mover's distance between two 1-D histograms (normalised here) on equal-width bins."""
    p = p / p.sum()
    q = q / q.sum()
    return float(np.abs(np.cumsum(p) - np.cumsum(q)).sum() * bin_width)


def chi_squared(p: np.ndarray, q: np.ndarray) -> float:
    """0.5 sum (p - q)^2 / (p + q) over bins where p + q > 0, on normalised histograms; in [0, 1]."""
    p = p / p.sum()
    q = q / q.sum()
    s = p + q
    nz = s > 0
    return float(0.5 * (((p - q) ** 2)[nz] / s[nz]).sum())


class ClassHistograms:
    """Per-class LAB and LBP histogram counts accumulated over batches."""

    def __init__(self, num_classes: int, ignore: int | None = None):
        self.num_classes = num_classes
        self.ignore = ignore
        self.lab = [np.zeros((num_classes, bins), np.int64) for _, _, bins in LAB_RANGES]
        self.lbp = np.zeros((num_classes, LBP_BINS), np.int64)

    def update(self, image: Tensor, label_ids: Tensor) -> None:
        """image: (B, 3, H, W) in [-1, 1]; label_ids: (B, H, W) model class ids."""
        if image.shape[-2:] != label_ids.shape[-2:]:
            raise ValueError(f"image {tuple(image.shape)} and labels {tuple(label_ids.shape)} differ in size")
        ids = label_ids.reshape(-1).long().cpu()
        lab = rgb_to_lab(image.detach().cpu())
        n = self.num_classes
        for ch, (lo, hi, bins) in enumerate(LAB_RANGES):
            # rounded to 1e-9 first: a grey's a and b are 0 only up to float64 rounding (+-1e-13, whose sign depends on
            # the kernel's summation order), and 0 is a bin edge
            v = torch.round(lab[:, ch].reshape(-1), decimals=9)
            b = ((v - lo) / (hi - lo) * bins).floor().long().clamp(0, bins - 1)
            self.lab[ch] += torch.bincount(ids * bins + b, minlength=n * bins).reshape(n, bins).numpy()
        codes = lbp_codes(image.detach().cpu()).reshape(-1)
        self.lbp += torch.bincount(ids * LBP_BINS + codes, minlength=n * LBP_BINS).reshape(n, LBP_BINS).numpy()

    def pixels(self) -> np.ndarray:
        return self.lbp.sum(1)


def compare(real: ClassHistograms, fake: ClassHistograms, min_pixels: int = 1) -> dict[str, float]:
    """Average per-class colour EMD and LBP chi-squared between two accumulated sets.

    Returns {"color_emd", "texture_chi2", "color_texture_classes"} (NaN distances when no class qualifies).
    """
    classes = [c for c in range(real.num_classes)
               if c != real.ignore and real.pixels()[c] >= min_pixels and fake.pixels()[c] >= min_pixels]
    if not classes:
        return {"color_emd": float("nan"), "texture_chi2": float("nan"), "color_texture_classes": 0.0}
    emd = []
    chi = []
    for c in classes:
        emd.append(np.mean([emd_1d(real.lab[ch][c].astype(float), fake.lab[ch][c].astype(float), (hi - lo) / bins)
                            for ch, (lo, hi, bins) in enumerate(LAB_RANGES)]))
        chi.append(chi_squared(real.lbp[c].astype(float), fake.lbp[c].astype(float)))
    return {"color_emd": float(np.mean(emd)), "texture_chi2": float(np.mean(chi)),
            "color_texture_classes": float(len(classes))}
