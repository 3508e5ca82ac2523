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


def _tap_index(ids: Tensor, num_classes: int, kh: int, kw: int) -> Tensor:
    """(B*H*W, kh*kw) int64: for every pixel and tap t, the table row ``class * kh*kw + t`` of the class the tap
    reads, counted from the first label row; a tap outside the image reads row ``num_classes * kh*kw + t`` (zero)."""
    b, h, w = ids.shape
    ph, pw = kh // 2, kw // 2
    scaled = F.pad(ids, (pw, pw, ph, ph), value=num_classes) * (kh * kw)
    taps = [scaled[:, dy:dy + h, dx:dx + w] + (dy * kw + dx) for dy in range(kh) for dx in range(kw)]
    return torch.stack(taps, dim=-1).reshape(-1, kh * kw)


def _inside(size: tuple[int, int], kernel: tuple[int, int], device, dtype) -> tuple[Tensor, Tensor]:
    """(kh, H) and (kw, W) masks: 1 where tap row i (column j) of a same-padded kernel falls inside the image."""
    (h, w), (kh, kw) = size, kernel
    ys = torch.arange(h, device=device)[None, :] + torch.arange(kh, device=device)[:, None] - kh // 2
    xs = torch.arange(w, device=device)[None, :] + torch.arange(kw, device=device)[:, None] - kw // 2
    return ((ys >= 0) & (ys < h)).to(dtype), ((xs >= 0) & (xs < w)).to(dtype)


class _FactoredConv(torch.autograd.Function):
    """conv2d([z broadcast ; one_hot(ids)], weight) in NHWC order, its weight gradient formed in one tensor.

    index (P, T) from :func:`_tap_index` (P = B*H*W pixels, T = kh*kw taps); weight (O, Z + N, kh, kw); z (B, Z)
    or None (then Z = 0); inside_y (kh, H), inside_x (kw, W) from :func:`_inside`. Returns (B, H, W, O).

    * labels: a table of the label channels' weight columns, row ``class * T + tap`` (plus T zero rows for taps
      outside the image); out[p] = sum over taps of the row the tap reads (``embedding_bag``). The table gradient
      is summed tap by tap with ``index_add_`` -- one pass over the output gradient per tap, where embedding_bag's
      own backward sorts all P*T indices first (2.0-2.5x slower for OASIS's label maps on a 2-core CPU, e.g.
      P = 8192, 9 taps, 36 rows per tap, O = 128: 7.6 ms against 3.5 ms; benchmarks/gradient_kernels.py);
    * noise: per tap, W_z[:, :, tap] @ z is the same at every pixel whose tap is inside the image:
      out[b, y, x] += sum over (i, j) of A[b, i, j] * inside_y[i, y] * inside_x[j, x].

    The backward writes both parts of the weight gradient into one weight-shaped tensor (the label part
    transposed back once), where building the table through slices, ``permute`` and ``pad`` in autograd
    zero-filled and copied weight-sized tensors several times. It is made of differentiable operations, so a
    second derivative (create_graph=True) works."""

    @staticmethod
    def forward(ctx, index, weight, z, inside_y, inside_x):
        o, c, kh, kw = weight.shape
        taps, (h, w) = kh * kw, (inside_y.shape[1], inside_x.shape[1])
        z_dim = 0 if z is None else z.shape[1]
        label_rows = (c - z_dim) * taps
        with torch.autocast(index.device.type, enabled=False):  # the sum in the weight's precision
            table = weight.new_empty(label_rows + taps, o)
            table[:label_rows].copy_(weight[:, z_dim:].reshape(o, label_rows).t())
            table[label_rows:].zero_()
            out = F.embedding_bag(index, table, mode="sum")  # (P, O)
            b = index.shape[0] // (h * w)
            out = out.view(b, h, w, o)
            if z is not None:  # (O, B, T): one product per output channel, reading the weight where it lies
                per_tap = torch.matmul(z, weight[:, :z_dim].reshape(o, z_dim, taps)).permute(1, 2, 0)
                out = out + torch.einsum("bijo,iy,jx->byxo", per_tap.reshape(b, kh, kw, o), inside_y, inside_x)
        ctx.save_for_backward(index, weight, z, inside_y, inside_x)
        return out

    @staticmethod
    def backward(ctx, grad):
        index, weight, z, inside_y, inside_x = ctx.saved_tensors
        b, h, w, o = grad.shape
        _, c, kh, kw = weight.shape
        taps = kh * kw
        z_dim = 0 if z is None else z.shape[1]
        label_rows = (c - z_dim) * taps
        grad_table = grad.new_zeros(label_rows + taps, o)
        flat = grad.reshape(-1, o)
        for tap in range(taps):
            grad_table.index_add_(0, index[:, tap], flat)
        grad_w = weight.new_empty(weight.shape)
        # transposed whole first (PyTorch's blocked 2D-transpose copy), then placed row by row: copying the
        # transposed view straight into the weight's slice reads one cache line per element (3x slower at 1024 x
        # 151 x 3 x 3)
        grad_w[:, z_dim:].copy_(grad_table[:label_rows].t().contiguous().view(o, c - z_dim, kh, kw))
        grad_z = None
        if z is not None:
            per_tap = torch.einsum("byxo,iy,jx->obij", grad, inside_y, inside_x).reshape(o, b, taps)
            grad_w[:, :z_dim].copy_(torch.matmul(z.t(), per_tap).view(o, z_dim, kh, kw))  # (O, Z, T)
            if ctx.needs_input_grad[2]:  # sum over o and t of per_tap[o, b, t] * W[o, z, t]
                w_z = weight[:, :z_dim].reshape(o, z_dim, taps)
                grad_z = torch.matmul(per_tap, w_z.transpose(1, 2)).sum(0)
        return None, grad_w, grad_z, None, None


def factored_conv2d(ids: Tensor, num_classes: int, weight: Tensor, z: Tensor | None = None) -> Tensor:
    """conv2d([z broadcast to every pixel ; one_hot(ids, num_classes)], weight, padding=k // 2) (no bias).

    ids: (B, H, W) int64; weight: (O, Z + N, kh, kw); z: None or (B, Z). Returns (B, O, H, W) with NHWC strides."""
    kh, kw = weight.shape[-2:]
    inside_y, inside_x = _inside(tuple(ids.shape[-2:]), (kh, kw), weight.device, weight.dtype)
    out = _FactoredConv.apply(_tap_index(ids, num_classes, kh, kw), weight,
                              None if z is None else z.to(weight.dtype), inside_y, inside_x)
    return out.permute(0, 3, 1, 2)


def onehot_conv2d(ids: Tensor, weight: Tensor) -> Tensor:
    """conv2d(one_hot(ids, N), weight, padding=k // 2) (no bias).

    ids: (B, H, W) int64; weight: (O, N, kh, kw); returns (B, O, H, W)."""
    return factored_conv2d(ids, weight.shape[1], weight)


def seg_conv2d(conv: nn.Conv2d, seg: SegInput) -> Tensor:
    """conv(seg.dense()), computed on the factored map: (B, O, H, W). Under autocast the sum is formed in the
    weight's precision and returned once in autocast's dtype, as the dense convolution would return it (the
    layers after it read it without casting it again)."""
    _check(conv, seg)
    weight = conv.weight
    z_dim = seg.z_dim
    if seg.z is None or seg.z.dim() == 2:
        out = factored_conv2d(seg.ids, seg.num_classes, weight, seg.z)
    else:  # spatial noise: a dense convolution over its channels
        out = factored_conv2d(seg.ids, seg.num_classes, weight[:, z_dim:])
        out = out + F.conv2d(seg.z.to(weight.dtype), weight[:, :z_dim], padding=conv.padding)
    if conv.bias is not None:
        out = out + conv.bias.view(1, -1, 1, 1)
    if torch.is_autocast_enabled(out.device.type):  # the dtype autocast's convolution of the dense map returns
        out = out.to(torch.get_autocast_dtype(out.device.type))
    if getattr(conv, "input_layout", "keep") == "by_shape":
        return out  # NHWC as the gather leaves it; the next convolution arranges its own input
    return out.contiguous()
