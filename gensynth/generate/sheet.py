"""Images for people: colourised label maps, tensors -> PIL, and contact sheets (label | samples)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def palette(classes) -> np.ndarray:
    """(N, 3) uint8 colours from a spec's ClassInfo list."""
    return np.array([c.color for c in classes], dtype=np.uint8).reshape(-1, 3)


def colorize(ids: Tensor | np.ndarray, colours: np.ndarray) -> Image.Image:
    """(H, W) class ids -> RGB PIL image using ``colours`` (N, 3); ids outside the table are black."""
    a = ids.cpu().numpy() if isinstance(ids, Tensor) else np.asarray(ids)
    a = a.astype(np.int64)
    out = np.zeros((*a.shape, 3), np.uint8)
    ok = (a >= 0) & (a < len(colours))
    out[ok] = colours[a[ok]]
    return Image.fromarray(out, "RGB")


def to_pil(images: Tensor) -> list[Image.Image]:
    """(…, 3, H, W) in [-1, 1] -> flat list of RGB PIL images (leading dimensions flattened in order)."""
    x = images.detach().float().cpu().reshape(-1, *images.shape[-3:])
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a, "RGB") for a in x]


def overlay(image: Image.Image, label: Image.Image, alpha: float = 0.5) -> Image.Image:
    """Blend a colourised label over an image (same size)."""
    return Image.blend(image.convert("RGB"), label.convert("RGB").resize(image.size, Image.NEAREST), alpha)


def contact_sheet(rows: Sequence[Sequence[Image.Image]], pad: int = 2, background=(255, 255, 255)) -> Image.Image:
    """A grid: one row per label map (e.g. colourised label, then its samples); cells sized by the largest."""
    if not rows or not any(rows):
        raise ValueError("contact_sheet needs at least one image")
    cw = max(im.width for r in rows for im in r)
    ch = max(im.height for r in rows for im in r)
    ncols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (pad + ncols * (cw + pad), pad + len(rows) * (ch + pad)), background)
    for i, r in enumerate(rows):
        for j, im in enumerate(r):
            sheet.paste(im.convert("RGB"), (pad + j * (cw + pad), pad + i * (ch + pad)))
    return sheet
