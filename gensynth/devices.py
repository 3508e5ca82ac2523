"""Device names (``--device``, ``trainer.device``) -> torch devices, with one-line errors for what is not there."""
from __future__ import annotations

import torch

from gensynth.errors import ConfigError

SUPPORTED = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(spec: str | torch.device = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` -> cuda:local_rank under DDP. ConfigError naming the value
    for an unknown or unsupported device type, and for a GPU this machine does not have."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = str(spec).strip()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda" and local_rank is not None:
        spec = f"cuda:{local_rank}"
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {spec!r} is not a device PyTorch knows; use {SUPPORTED}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
            raise ConfigError(f"device {spec!r}: no CUDA GPU is available (PyTorch {torch.__version__}, {build}); "
                              f"use --device cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {spec!r}: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")
        return device
    if device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"device {spec!r}: Apple MPS is not available here; use --device cpu or auto")
        return device
    raise ConfigError(f"device {spec!r} ({device.type}) is not supported by gensynth; use {SUPPORTED}")
