"""Per-class colour and texture statistics of generated vs real images (the OASIS paper's analysis), on
scikit-image and scipy.

For every semantic class, pixels of that class are pooled over the whole set (real images with their label
maps; generated images with the same label maps) into

* colour: three 1-D histograms of CIE-LAB (D65, ``skimage.color.rgb2lab``) channels: L in [0, 100] (50 bins),
  a and b in [-128, 128] (64 bins each). Real and generated histograms are compared with the 1-D earth mover's
  distance (``scipy.stats.wasserstein_distance`` on the bin centres, in LAB units), averaged over the channels.
* texture: a 256-bin histogram of local binary patterns (``skimage.feature.local_binary_pattern``, 8 neighbours on
  a circle of radius 1, bilinearly interpolated, the "default" code) of the 8-bit grey image
  (round(0.299 R + 0.587 G + 0.114 B)); the image is edge-padded by one pixel first so that border pixels compare
  with their replicated neighbours, not with zeros. Compared with the chi-squared distance
  0.5 sum (p - q)^2 / (p + q) (0 = equal, 1 = disjoint).

Both distances are averaged over the classes with at least ``min_pixels`` pixels in both sets (the don't-care
class excluded). Lower is better.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from gensynth.eval.deps import optional_import

LAB_RANGES = ((0.0, 100.0, 50), (-128.0, 128.0, 64), (-128.0, 128.0, 64))  # (lo, hi, bins) per channel
LBP_BINS = 256
LBP_POINTS, LBP_RADIUS = 8, 1


def rgb_to_lab(image: Tensor) -> Tensor:
    """(B, 3, H, W) sRGB in [-1, 1] -> (B, 3, H, W) CIE-LAB (D65, 2 degree observer) in float64, by scikit-image."""
    color = optional_import("skimage.color", "color-texture")
    rgb = ((image.detach().cpu().double() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return torch.from_numpy(color.rgb2lab(rgb, channel_axis=-1)).permute(0, 3, 1, 2).contiguous()


def grey_uint8(image: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W) uint8 grey, round(0.299 R + 0.587 G + 0.114 B)."""
    rgb = ((image.detach().cpu().double() + 1) * 127.5).clamp(0, 255)
    return (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]).round().to(torch.uint8).numpy()


def lbp_codes(image: Tensor) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W) int64 LBP codes in [0, 255], by scikit-image (see the module text)."""
    feature = optional_import("skimage.feature", "color-texture")
    out = []
    for g in grey_uint8(image):
        padded = np.pad(g, 1, mode="edge")
        codes = feature.local_binary_pattern(padded, LBP_POINTS, LBP_RADIUS, method="default")[1:-1, 1:-1]
        out.append(torch.from_numpy(codes.astype(np.int64)))
    return torch.stack(out)


def emd_1d(p: np.ndarray, q: np.ndarray, bin_width: float) -> float:
    """Earth mover's distance between two 1-D histograms on equal-width bins (scipy, bin centres as positions)."""
    stats = optional_import("scipy.stats", "color-texture")
    centres = (np.arange(len(p)) + 0.5) * bin_width
    return float(stats.wasserstein_distance(centres, centres, np.asarray(p, float), np.asarray(q, float)))


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
        lab = rgb_to_lab(image)
        n = self.num_classes
        for ch, (lo, hi, bins) in enumerate(LAB_RANGES):
            # rounded to 0.01 first: skimage's D65 white point (0.95047, 1, 1.08883) is rounded, so a grey's a and b
            # come out as +-0.005 instead of 0, and 0 is a bin edge (bins are 2 and 4 LAB units wide)
            v = torch.round(lab[:, ch].reshape(-1), decimals=2)
            b = ((v - lo) / (hi - lo) * bins).floor().long().clamp(0, bins - 1)
            self.lab[ch] += torch.bincount(ids * bins + b, minlength=n * bins).reshape(n, bins).numpy()
        codes = lbp_codes(image).reshape(-1)
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
