"""Convolutions of [noise ; one-hot labels] computed without multiplying zeros.

SPADE layers and the OASIS generator's first layer convolve a map whose channels are a one-hot label map (N
channels, one of them 1 at every pixel) after, in OASIS, a noise vector copied to every pixel. As a dense
convolution that costs 2*H*W*(Z+N)*O*k*k operations, almost all of them multiplications by 0 or by the same
numbers again. The same function, exactly (up to floating-point summation order), is

* labels: out[:, p] = sum over taps d of W[:, id(p + d), d] -- a gather of weight columns (``embedding_bag``);
* broadcast noise z (B, Z): out[b, :, p] = sum over the taps d inside the image of (W_z[:, :, d] @ z_b) (zero
  padding makes the borders differ, and is reproduced);
* spatial noise (B, Z, H, W) (local re-sampling) keeps a dense convolution over its Z channels only.

:class:`SegInput` carries the factored map through the generator; :func:`seg_conv2d` applies a ``nn.Conv2d``
(stride 1, odd kernel, ``same`` zero padding) to it. Gradients reach the weight, bias and noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class SegInput:
    """The map ``cat([z_map, one_hot(ids)], dim=1)`` without materialising it.

    ids: (B, H, W) int64 in [0, num_classes); z: None, (B, Z) (the same noise at every pixel) or (B, Z, H, W).
    Noise channels come first, as the OASIS generator concatenates them.
    """

    ids: Tensor
    num_classes: int
    z: Tensor | None = None

    @property
    def z_dim(self) -> int:
        return 0 if self.z is None else int(self.z.shape[1])

    @property
    def shape(self) -> torch.Size:
        b, h, w = self.ids.shape
        return torch.Size((b, self.z_dim + self.num_classes, h, w))

    def dense(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The materialised (B, Z + N, H, W) map."""
        labels = F.one_hot(self.ids, self.num_classes).permute(0, 3, 1, 2).to(dtype)
        if self.z is None:
            return labels
        z = self.z.to(dtype)
        if z.dim() == 2:
            z = z[:, :, None, None].expand(-1, -1, *self.ids.shape[-2:])
        return torch.cat([z, labels], dim=1)

    def resized(self, size: tuple[int, int]) -> "SegInput":
        """Nearest resizing to ``size`` (H', W'), the same pixels F.interpolate(mode='nearest') picks."""
        if tuple(size) == tuple(self.ids.shape[-2:]):
            return self
        ids = F.interpolate(self.ids[:, None].float(), size=size, mode="nearest")[:, 0].long()
        z = self.z
        if z is not None and z.dim() == 4:
            z = F.interpolate(z, size=size, mode="nearest")
        return SegInput(ids, self.num_classes, z)


def _check(conv: nn.Conv2d, seg: SegInput) -> tuple[int, int]:
    kh, kw = conv.kernel_size
    if (conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1 or kh % 2 == 0 or kw % 2 == 0
            or conv.padding != (kh // 2, kw // 2) or conv.padding_mode != "zeros"):
        raise ValueError(f"seg_conv2d needs a stride-1, same-padded, odd-kernel convolution, got {conv}")
    if conv.in_channels != seg.z_dim + seg.num_classes:
        raise ValueError(f"{conv} takes {conv.in_channels} channels, the label map has {seg.z_dim} noise + "
                         f"{seg.num_classes} label channels")
    return kh, kw


def onehot_conv2d(ids: Tensor, weight: Tensor) -> Tensor:
    """conv2d(one_hot(ids, N), weight, padding=k // 2) (no bias).

    ids: (B, H, W) int64; weight: (O, N, kh, kw); returns (B, O, H, W)."""
    o, n, kh, kw = weight.shape
    b, h, w = ids.shape
    ph, pw = kh // 2, kw // 2
    padded = F.pad(ids, (pw, pw, ph, ph), value=n)  # outside the image: row n of each tap's table, all zeros
    # one table per tap: rows 0..n-1 = that tap's weight columns, row n = 0
    table = F.pad(weight.permute(2, 3, 1, 0), (0, 0, 0, 1)).reshape(kh * kw * (n + 1), o)
    taps = [padded[:, dy:dy + h, dx:dx + w] + (dy * kw + dx) * (n + 1) for dy in range(kh) for dx in range(kw)]
    index = torch.stack(taps, dim=-1).reshape(-1, kh * kw)  # (B*H*W, taps)
    out = _TapGather.apply(index, table)  # (B*H*W, O)
    return out.view(b, h, w, o).permute(0, 3, 1, 2)


class _TapGather(torch.autograd.Function):
    """``F.embedding_bag(index, table, mode="sum")`` (index (P, taps), table (rows, O) -> (P, O)) whose table
    gradient is summed tap by tap with ``index_add_``: one pass over the output gradient per tap, where
    embedding_bag's own backward sorts all P*taps indices first (2.0-2.5x slower for OASIS's label maps on a
    2-core CPU, e.g. P = 8192, 9 taps, 36 rows per tap, O = 128: 7.6 ms against 3.5 ms;
    benchmarks/gradient_kernels.py)."""

    @staticmethod
    def forward(ctx, index, table):
        ctx.save_for_backward(index)
        ctx.rows = table.shape[0]
        return F.embedding_bag(index, table, mode="sum")

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        grad_table = grad.new_zeros(ctx.rows, grad.shape[1])
        for tap in range(index.shape[1]):
            grad_table.index_add_(0, index[:, tap], grad)
        return None, grad_table


def broadcast_conv2d(z: Tensor, weight: Tensor, size: tuple[int, int]) -> Tensor:
    """conv2d(z broadcast to (B, Z, H, W), weight, padding=k // 2) (no bias): z (B, Z), weight (O, Z, kh, kw).

    Per tap d the contribution W_z[:, :, d] @ z is the same at every pixel whose tap falls inside the image:
    out[b, o, y, x] = sum_{i, j} A[b, o, i, j] * inside_y[i, y] * inside_x[j, x]."""
    o, _, kh, kw = weight.shape
    h, w = size
    per_tap = torch.einsum("ozij,bz->boij", weight, z.to(weight.dtype))  # (B, O, kh, kw)
    dev = per_tap.device
    ys = torch.arange(h, device=dev)[None, :] + torch.arange(kh, device=dev)[:, None] - kh // 2
    xs = torch.arange(w, device=dev)[None, :] + torch.arange(kw, device=dev)[:, None] - kw // 2
    inside_y = ((ys >= 0) & (ys < h)).to(per_tap.dtype)  # (kh, H)
    inside_x = ((xs >= 0) & (xs < w)).to(per_tap.dtype)  # (kw, W)
    return torch.einsum("boij,iy,jx->boyx", per_tap, inside_y, inside_x)


def seg_conv2d(conv: nn.Conv2d, seg: SegInput) -> Tensor:
    """conv(seg.dense()), computed on the factored map: (B, O, H, W). Under autocast the sum is formed in the
    weight's precision and returned once in autocast's dtype, as the dense convolution would return it (the
    layers after it read it without casting it again)."""
    _check(conv, seg)
    weight = conv.weight
    z_dim = seg.z_dim
    out = onehot_conv2d(seg.ids, weight[:, z_dim:])
    if seg.z is not None:
        w_z = weight[:, :z_dim]
        if seg.z.dim() == 2:
            out = out + broadcast_conv2d(seg.z, w_z, tuple(seg.ids.shape[-2:]))
        else:
            out = out + F.conv2d(seg.z.to(w_z.dtype), w_z, padding=conv.padding)
    if conv.bias is not None:
        out = out + conv.bias.view(1, -1, 1, 1)
    if torch.is_autocast_enabled(out.device.type):  # the dtype autocast's convolution of the dense map returns
        out = out.to(torch.get_autocast_dtype(out.device.type))
    if getattr(conv, "input_layout", "keep") == "by_shape":
        return out  # NHWC as the gather leaves it; the next convolution arranges its own input
    return out.contiguous()
