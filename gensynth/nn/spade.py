"""SPADE normalisation and the SPADE residual block (Park et al. 2019), shared by OASIS and SPADE.

Spectral norm keeps the state-dict keys of torch's hook implementation (``weight_orig``, ``weight_u``,
``weight_v``), which are those of the official OASIS and SPADE checkpoints, so importing them needs no key
surgery beyond module names (the parametrization API would name them ``parametrizations.weight.original`` /
``...0._u`` / ``...0._v``). Convolutions use :class:`gensynth.nn.spectral.SpectralConv2d`, the same function
computed more cheaply; other layers torch's hook.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import spectral_norm

from gensynth.nn.conv import Conv2d
from gensynth.nn.label_conv import SegInput, seg_conv2d
from gensynth.nn.spectral import SpectralConv2d


def maybe_sn(module: nn.Module, enabled: bool) -> nn.Module:
    """``module`` with spectral normalisation when ``enabled``: a :class:`SpectralConv2d` for a plain zero-padded
    ``nn.Conv2d``, torch's ``spectral_norm`` hook for anything else (same state-dict keys either way)."""
    if not enabled:
        return module
    if type(module) is nn.Conv2d and module.padding_mode == "zeros" and not isinstance(module.padding, str):
        return SpectralConv2d.from_conv(module)
    return spectral_norm(module)


def param_free_norm(kind: str, channels: int) -> nn.Module:
    """'batch' / 'syncbatch' -> BatchNorm2d(affine=False) (converted to SyncBatchNorm by the trainer
    on multi-GPU CUDA); 'instance' -> InstanceNorm2d(affine=False)."""
    if kind in ("batch", "syncbatch"):
        return nn.BatchNorm2d(channels, affine=False)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    raise ValueError(f"param-free norm must be 'batch', 'syncbatch' or 'instance', got {kind!r}")


def segmentation_input(cond, num_classes: int, with_edges: bool, what: str) -> Tensor:
    """(B, num_classes [+1], H, W): a Condition's one-hot labels, then its instance edge map when ``with_edges``
    (the input of SPADE-style generators, e.g. SPADE and CC-FPSE); ValueError naming ``what`` ("SPADE") for labels
    of another class count or missing edges."""
    import torch

    labels = cond.labels
    if labels.shape[1] != num_classes:
        raise ValueError(f"the {what} generator was built for {num_classes} label channels, "
                         f"got labels of shape {tuple(labels.shape)}")
    if not with_edges:
        return labels
    if cond.instance_edges is None:
        raise ValueError(f"this {what} generator uses instance edges (use_instance_edges=true) but the "
                         "Condition has none: the dataset needs instance maps, or set use_instance_edges=false")
    return torch.cat([labels, cond.instance_edges.to(labels.dtype)], dim=1)


def resize_seg(seg: Tensor | SegInput, size) -> Tensor | SegInput:
    """``seg`` (B, C, h, w) resized to ``size`` with nearest interpolation (unchanged when it already fits)."""
    if tuple(seg.shape[-2:]) == tuple(size):
        return seg
    if isinstance(seg, SegInput):
        return seg.resized(tuple(size))
    return F.interpolate(seg, size=size, mode="nearest")


class SPADE(nn.Module):
    """out = norm(x) * (1 + gamma(seg)) + beta(seg).

    x: (B, C, H, W); seg: (B, label_nc, h, w) or a :class:`~gensynth.nn.label_conv.SegInput`, resized to (H, W)
    with nearest interpolation.
    Submodule names follow the official OASIS code: ``first_norm``, ``mlp_shared.0``, ``mlp_gamma``,
    ``mlp_beta``.
    """

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128, kernel_size: int = 3, norm: str = "batch"):
        super().__init__()
        self.first_norm = param_free_norm(norm, norm_nc)
        pad = kernel_size // 2
        self.mlp_shared = nn.Sequential(Conv2d(label_nc, hidden, kernel_size, padding=pad), nn.ReLU())
        self.mlp_gamma = Conv2d(hidden, norm_nc, kernel_size, padding=pad)
        self.mlp_beta = Conv2d(hidden, norm_nc, kernel_size, padding=pad)

    def forward(self, x: Tensor, seg: Tensor | SegInput) -> Tensor:
        normalized = self.first_norm(x)
        seg = resize_seg(seg, x.shape[-2:])
        if isinstance(seg, SegInput):  # [noise ; one-hot labels] kept factored: no multiplications by zeros
            actv = self.mlp_shared[1](seg_conv2d(self.mlp_shared[0], seg))
        else:
            actv = self.mlp_shared(seg)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResBlock(nn.Module):
    """SPADE residual block: fmiddle = min(fin, fout); learned 1x1 shortcut (no bias) when fin != fout.

    dx = conv_0(lrelu(norm_0(x, seg))); dx = conv_1(lrelu(norm_1(dx, seg)));
    out = shortcut + dx, shortcut = conv_s(norm_s(x, seg)) with no activation.
    """

    def __init__(self, fin: int, fout: int, label_nc: int, spectral: bool = True, norm: str = "batch",
                 hidden: int = 128, kernel_size: int = 3):
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = maybe_sn(nn.Conv2d(fin, fmiddle, 3, padding=1), spectral)
        self.conv_1 = maybe_sn(nn.Conv2d(fmiddle, fout, 3, padding=1), spectral)
        if self.learned_shortcut:
            self.conv_s = maybe_sn(nn.Conv2d(fin, fout, 1, bias=False), spectral)
        self.norm_0 = SPADE(fin, label_nc, hidden, kernel_size, norm)
        self.norm_1 = SPADE(fmiddle, label_nc, hidden, kernel_size, norm)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_nc, hidden, kernel_size, norm)

    def forward(self, x: Tensor, seg: Tensor | SegInput) -> Tensor:
        seg = resize_seg(seg, x.shape[-2:])  # once for the block's two or three SPADE layers
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return x_s + dx


def init_xavier(module: nn.Module, gain: float = 0.02) -> None:
    """The official OASIS/SPADE initialisation: xavier_normal(gain) on Conv/Linear weights, zero biases.
    On spectral-normed convs this initialises ``weight_orig``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d, SpectralConv2d)):
            w = m.weight_orig if hasattr(m, "weight_orig") else m.weight
            if w.device.type != "meta":
                nn.init.xavier_normal_(w, gain=gain)
            if m.bias is not None and m.bias.device.type != "meta":
                nn.init.zeros_(m.bias)
