"""What the painting page and the server exchange: the JSON request of one image and its grid encoding.

``ids`` and ``noise`` grids travel as base64 of (H, W) uint16 little-endian arrays (model class ids; indices into
``seeds``), which the page builds from its ``Uint16Array`` without any per-pixel work.
"""
from __future__ import annotations

import base64

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gensynth.errors import DataError

MAX_SIDE = 2048  # largest canvas side the server accepts
MAX_SEEDS = 4096  # largest number of distinct noise seeds in one request


class GenerateRequest(BaseModel):
    """One image request from the page (JSON body of ``POST /api/generate``)."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(ge=1, le=MAX_SIDE)
    height: int = Field(ge=1, le=MAX_SIDE)
    ids: str = Field(description="base64 of (H, W) uint16 little-endian model class ids")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, max_length=MAX_SEEDS)
    noise: str | None = Field(None, description="base64 of (H, W) uint16 indices into seeds; None = all 0")
    style: str | None = Field(None, description="base64 of a style image file (PNG/JPEG) or a data: URL")

    @field_validator("seeds")
    @classmethod
    def _seed_range(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if not 0 <= s < 2 ** 63]
        if bad:
            raise ValueError(f"seeds must be integers in 0..2**63-1, got {bad[:3]}")
        return v


def decode_grid(text: str, height: int, width: int, what: str) -> np.ndarray:
    """base64 of uint16 little-endian values -> (H, W) int64; DataError naming ``what`` for a wrong length."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise DataError(f"{what}: not valid base64 ({exc})") from exc
    if len(raw) != 2 * height * width:
        raise DataError(f"{what}: expected {height}x{width} uint16 values ({2 * height * width} bytes), "
                        f"got {len(raw)} bytes")
    return np.frombuffer(raw, dtype="<u2").reshape(height, width).astype(np.int64)


def encode_grid(ids: np.ndarray) -> str:
    """(H, W) ints in 0..65535 -> base64 of uint16 little-endian (what the page sends and reads)."""
    return base64.b64encode(np.ascontiguousarray(ids, dtype="<u2").tobytes()).decode("ascii")


def decode_style(text: str) -> bytes:
    """A style image as base64 or a ``data:image/...;base64,`` URL -> file bytes."""
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise DataError(f"style image: not valid base64 ({exc})") from exc
