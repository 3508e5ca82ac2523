"""Sample grids: one row per example, columns label in colour | generated (EMA) | real."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def palette(classes) -> Tensor:
    """(N, 3) uint8 colours from a dataset's ClassInfo list (index = model class id)."""
    return torch.tensor([list(c.color) for c in classes], dtype=torch.uint8)


def colorize(label: Tensor, colors: Tensor) -> Tensor:
    """(B, H, W) int64 class ids -> (B, 3, H, W) uint8 colours (ids beyond the palette are black)."""
    label = label.to("cpu").long()
    table = torch.cat([colors, torch.zeros(1, 3, dtype=torch.uint8)])
    idx = torch.where((label >= 0) & (label < len(colors)), label, torch.full_like(label, len(colors)))
    return table[idx].permute(0, 3, 1, 2).contiguous()


def to_uint8(image: Tensor) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> uint8."""
    return ((image.detach().float().to("cpu").clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def make_grid(label: Tensor, fake: Tensor, real: Tensor, colors: Tensor, pad: int = 2) -> Tensor:
    """(3, B*(H+pad)-pad, 3*(W+pad)-pad) uint8 grid; rows are examples."""
    cols = [colorize(label, colors), to_uint8(fake), to_uint8(real)]
    b, _, h, w = cols[1].shape
    grid = torch.full((3, b * (h + pad) - pad, 3 * (w + pad) - pad), 255, dtype=torch.uint8)
    for i in range(b):
        for j, col in enumerate(cols):
            grid[:, i * (h + pad): i * (h + pad) + h, j * (w + pad): j * (w + pad) + w] = col[i]
    return grid


def save_png(grid: Tensor, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(np.ascontiguousarray(grid.permute(1, 2, 0).numpy())).save(tmp, format="PNG")
    tmp.replace(path)
