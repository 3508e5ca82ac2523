"""Speed options that do not change what is trained: optimiser kernels, memory format, TF32, per-device defaults.

Every option here computes the same function as the plain PyTorch path, up to floating-point rounding
(tests/test_speed_options.py checks each against the reference within a tolerance). ``auto`` picks, per device
type, the setting measured fastest on that kind of device (benchmarks/README.md, "Speed options"):

=================  =====================  ==========================================================
option             CPU (measured here)    CUDA
=================  =====================  ==========================================================
optim.implementation  fused               fused (torch's fused Adam kernels)
trainer.channels_last by_shape            true (tensor-core convolutions prefer NHWC; not measured here)
trainer.tf32          -                   false: full fp32 unless asked for (both matmul and cuDNN flags)
=================  =====================  ==========================================================

``by_shape`` also runs weight-bound CPU convolutions as matrix products (:mod:`gensynth.nn.gemm_conv`; never on
CUDA, where it was not measured), whose weight gradients go into memory kept from the previous backward
(:mod:`gensynth.nn.grad_buffer`).
"""
from __future__ import annotations

from typing import Iterable, Literal

import torch
from torch import nn

from gensynth.nn.conv import set_input_layout

OptimImpl = Literal["auto", "fused", "foreach", "for-loop"]


def resolve_optim_impl(impl: OptimImpl, device: torch.device) -> str:
    """'auto' -> 'fused' on CPU and CUDA (torch >= 2.4 has fused Adam for both), 'for-loop' elsewhere."""
    if impl != "auto":
        return impl
    return "fused" if device.type in ("cpu", "cuda") else "for-loop"


def make_adam(params: Iterable[nn.Parameter], lr: float, betas: tuple[float, float], impl: OptimImpl,
              device: torch.device) -> torch.optim.Adam:
    """torch.optim.Adam with the chosen kernel: 'fused' (one kernel over all tensors), 'foreach' (batched
    per-op kernels) or 'for-loop' (one tensor at a time, what the official OASIS code ran)."""
    chosen = resolve_optim_impl(impl, device)
    kwargs = {"fused": True} if chosen == "fused" else {"foreach": chosen == "foreach"}
    return torch.optim.Adam(list(params), lr=lr, betas=betas, **kwargs)


MemoryLayout = Literal["nchw", "nhwc", "by_shape"]


def resolve_channels_last(setting: bool | Literal["auto", "by_shape"], device: torch.device) -> MemoryLayout:
    """``trainer.channels_last`` -> the layout to apply: True -> 'nhwc', False -> 'nchw', 'by_shape' as is, and
    'auto' -> 'nhwc' on CUDA, 'by_shape' on CPU (measured on CPU: whole-model NHWC was slower for OASIS, per-layer
    choice faster; benchmarks/README.md)."""
    if setting == "auto":
        return "nhwc" if device.type == "cuda" else "by_shape"
    if setting == "by_shape":
        return "by_shape"
    return "nhwc" if setting else "nchw"


def apply_memory_layout(module: nn.Module, layout: MemoryLayout) -> nn.Module:
    """'nhwc': store the 4D parameters and buffers of ``module`` channels-last (the trainer feeds NHWC batches);
    'nchw': NCHW parameters; with either, every gensynth convolution keeps its input's format (plain PyTorch).
    'by_shape': NCHW parameters, and each convolution picks NHWC or NCHW per call
    (:func:`gensynth.nn.conv.arrange_input`), weight-bound CPU calls as matrix products
    (:mod:`gensynth.nn.gemm_conv`). Results are unchanged up to rounding."""
    set_input_layout(module, "by_shape" if layout == "by_shape" else "keep")
    if layout == "nhwc":
        module.to(memory_format=torch.channels_last)
    return module


def set_tf32(device: torch.device, enabled: bool) -> None:
    """Set TF32 for CUDA matmuls and cuDNN convolutions explicitly (no effect on CPU).

    PyTorch's own defaults differ between the two (matmul off, cuDNN on); gensynth sets both to ``enabled``."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cudnn.benchmark = True
