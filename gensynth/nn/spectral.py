"""Spectral normalisation of convolutions, computed where it is cheaper.

:class:`SpectralConv2d` gives the results of ``torch.nn.utils.spectral_norm(nn.Conv2d(...))`` (the official
OASIS/SPADE layers) with the same state-dict keys (``weight_orig``, ``bias``, ``weight_u``, ``weight_v``), the
same initial ``u``/``v`` draws and the same per-call power iteration (one per forward in training mode, none in
eval mode), but it does not always divide the weight by sigma:

    conv(x, W / sigma) + b  ==  conv(x, W) / sigma + b

The hook divides the whole weight on every call and differentiates through that division: several passes over
the weight per forward and backward. For the deep, low-resolution layers of OASIS (a 1024x1024x3x3 weight = 9.4M
numbers applied to a 4x4 map) the output is hundreds of times smaller than the weight, so this module scales the
output instead whenever it has fewer elements than the weight (``scale="auto"``). Both forms are the same
function; they differ only in floating-point rounding (relative ~1e-6 in fp32, see tests/test_spectral.py).

Under autocast, a layer whose output is much smaller than its weight (under 1/64) is bound by reading the
weight, not by arithmetic: casting the weight to bf16/fp16 and back (and the low-precision weight gradient) costs
more than the convolution saves, so such calls run in fp32 (:func:`gensynth.nn.conv.autocast_keeps_fp32`);
compute-bound layers run in low precision.

:func:`consecutive_calls` lets one forward on a concatenated batch stand for several consecutive calls (OASIS's
D step judges the fake, the real and the LabelMix images): each chunk gets the power iteration and the sigma its
own call would have had, so merging the calls changes nothing but rounding.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensynth.nn.conv import (InputLayout, arrange_input, autocast_active, autocast_keeps_fp32, conv_output_numel,
                              weight_bound)
from gensynth.nn.gemm_conv import gemm_conv2d, gemm_conv2d_backward, gemm_conv2d_forward, prefers_matrix_products
from gensynth.nn.grad_buffer import GradientBuffer, layer_gradient_buffer

Scale = Literal["auto", "weight", "output"]


def _per_sample(values: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """(K,) per-chunk values -> (B, 1, 1, 1), chunk k repeated sizes[k] times."""
    return torch.cat([values[k].expand(n) for k, n in enumerate(sizes)]).view(-1, 1, 1, 1)


class _OutputScaledConv(torch.autograd.Function):
    """conv(x, W) / sigma + b for a given sigma = u^T W v (u, v constants), differentiable in x, W and b.

    One call: u (out,), v (in*kh*kw,), sigma 0-d, sizes None. Chunked (:func:`consecutive_calls`): u (K, out),
    v (K, in*kh*kw), sigma (K,), and the batch is K chunks of ``sizes``, chunk k divided by sigma[k].

    The backward adds sigma's rank-1 weight gradients ``g_sigma_k * u_k v_k^T`` in place (``addr_``/``addmm_``)
    into the convolution's weight gradient instead of materialising them and summing weight-sized tensors (what
    autograd does through ``dot(u, mv(W, v))``); with ``gemm`` (a weight-bound CPU call,
    :mod:`gensynth.nn.gemm_conv`) the convolution runs as matrix products and those terms join the weight
    gradient's product. First-order only: a double backward raises."""

    @staticmethod
    def forward(ctx, x, weight, bias, u, v, sigma, stride, padding, dilation, groups, sizes=None, gemm=False,
                grad_buffer=None):
        if gemm:
            y = gemm_conv2d_forward(x, weight, stride, padding, dilation)
        else:
            y = F.conv2d(x, weight, None, stride, padding, dilation, groups)
        inv = torch.reciprocal(sigma)
        if sizes is not None:
            inv = _per_sample(inv, sizes)
        out = y * inv if bias is None else torch.addcmul(bias.view(1, -1, 1, 1), y, inv)
        ctx.save_for_backward(x, weight, u, v, y, sigma)
        ctx.conf = (stride, padding, dilation, groups, sizes, gemm, grad_buffer)
        return out

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():
            raise RuntimeError("SpectralConv2d's fused backward is first-order only, and this backward was asked for "
                               "a graph (create_graph=True, e.g. a gradient penalty); set "
                               "gensynth.nn.spectral.SpectralConv2d.fused_backward = False for such models")
        x, weight, u, v, y, sigma = ctx.saved_tensors
        stride, padding, dilation, groups, sizes, gemm, grad_buffer = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx = gw = gb = None
        rank = None
        if need_w:  # d(y / sigma) / d sigma = -y / sigma^2, d sigma / dW = u v^T
            if sizes is None:
                g_sigma = -(grad * y).sum() / (sigma * sigma)
                rank = (u * g_sigma).unsqueeze(1), v.unsqueeze(0)  # (out, 1), (1, rest)
            else:
                per_sample = (grad * y).sum(dim=(1, 2, 3))
                g_sigma = -torch.stack([c.sum() for c in per_sample.split(list(sizes))]) / (sigma * sigma)
                rank = (u * g_sigma.unsqueeze(1)).t(), v  # (out, K), (K, rest)
        if need_x or need_w:
            scaled = grad / sigma if sizes is None else grad * _per_sample(torch.reciprocal(sigma), sizes)
            if gemm:  # sigma's rank-R term goes into the weight gradient's matrix product
                gx, gw = gemm_conv2d_backward(scaled, x, weight, stride, padding, dilation, need_x, need_w, rank,
                                              grad_buffer)
                rank = None
            else:
                gx, gw, _ = torch.ops.aten.convolution_backward(
                    scaled, x, weight, None, stride, padding, dilation, False, [0, 0], groups,
                    [need_x, need_w, False])
        if rank is not None:
            left, right = rank
            if not gw.is_contiguous() and weight.is_contiguous():
                gw = gw.contiguous()  # an NHWC input gives an NHWC weight gradient; the parameter is NCHW
            if not gw.is_contiguous():
                gw = gw + (left @ right).view_as(gw)
            elif sizes is None:
                gw.view(gw.shape[0], -1).addr_(left.squeeze(1), right.squeeze(0))
            else:
                gw.view(gw.shape[0], -1).addmm_(left, right)
        if need_b:
            gb = grad.sum(dim=(0, 2, 3))
        return gx, gw, gb, None, None, None, None, None, None, None, None, None, None


class SpectralConv2d(nn.Module):
    """A 2D convolution whose weight is divided by its largest singular value (estimated by power iteration).

    x: (B, in_channels, H, W) -> (B, out_channels, H', W'). Parameters ``weight_orig`` (out, in/groups, kh, kw)
    and ``bias`` (out,) or None; buffers ``weight_u`` (out,) and ``weight_v`` (in/groups*kh*kw,).
    ``weight`` (read-only attribute) is the normalised weight W / sigma at the current u, v.
    """

    #: output-scaled calls use :class:`_OutputScaledConv` (in-place rank-1 gradient); False = plain autograd
    fused_backward: bool = True
    #: "by_shape" (default) or "keep": the input's memory format per call (:func:`gensynth.nn.conv.arrange_input`)
    input_layout: InputLayout = "by_shape"
    #: matrix-product calls write the weight gradient into memory kept from the previous backward
    #: (:mod:`gensynth.nn.grad_buffer`); False = fresh memory every backward
    recycle_weight_grad: bool = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, *, eps: float = 1e-12, scale: Scale = "auto"):
        super().__init__()
        self._init_from(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias),
                        eps, scale)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, *, eps: float = 1e-12, scale: Scale = "auto") -> "SpectralConv2d":
        """Wrap an existing ``nn.Conv2d`` (its weight and bias become ``weight_orig``/``bias``)."""
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"SpectralConv2d supports numeric zero padding only, got padding={conv.padding!r}, "
                             f"padding_mode={conv.padding_mode!r}")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._init_from(conv, eps, scale)
        return self

    def _init_from(self, conv: nn.Conv2d, eps: float, scale: Scale) -> None:
        if scale not in ("auto", "weight", "output"):
            raise ValueError(f"scale must be 'auto', 'weight' or 'output', got {scale!r}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self.eps, self.scale = eps, scale
        self.call_sizes: tuple[int, ...] | None = None  # set by consecutive_calls()
        weight = conv.weight
        if conv.bias is not None:
            self.bias = conv.bias
        else:
            self.register_parameter("bias", None)
        self.weight_orig = weight
        # the same draws, in the same order, as torch.nn.utils.spectral_norm: u ~ N(0, I_out), then v ~ N(0, I_rest)
        with torch.no_grad():
            h, w = weight.shape[0], weight[0].numel()
            u = F.normalize(weight.new_empty(h).normal_(0, 1), dim=0, eps=eps)
            v = F.normalize(weight.new_empty(w).normal_(0, 1), dim=0, eps=eps)
        self.register_buffer("weight_u", u)
        self.register_buffer("weight_v", v)

    # ------------------------------------------------------------------------------------------
    def _sigma(self, power_iteration: bool) -> Tensor:
        """sigma = u^T W v (differentiable in W, u and v held constant), after one power-iteration update of u, v.

        torch's hook computes W v twice (once to update u, once for sigma); both products are the same numbers,
        so here the one differentiable product serves both: bit-identical u, v and sigma with one weight pass
        fewer per call. The buffers receive copies of the new u, v; autograd only sees fresh tensors (so later
        in-place updates of the buffers, e.g. by the next call before this backward, never invalidate it)."""
        w = self.weight_orig.reshape(self.weight_orig.shape[0], -1)
        if not power_iteration:
            return torch.dot(self.weight_u, torch.mv(w, self.weight_v))
        if torch.compiler.is_compiling():
            u, v = self._power_iteration_eager()
            return torch.dot(u, torch.mv(w, v))
        with torch.no_grad():
            v = F.normalize(torch.mv(w.t(), self.weight_u), dim=0, eps=self.eps)
            self.weight_v.copy_(v)
        wv = torch.mv(w, v)
        with torch.no_grad():
            u = F.normalize(wv, dim=0, eps=self.eps)
            self.weight_u.copy_(u)
        return torch.dot(u, wv)

    @torch.no_grad()
    def _constants(self, power_iteration: bool) -> tuple[Tensor, Tensor, Tensor]:
        """(u, v, sigma) as fresh constants, after the same update as :meth:`_sigma` when ``power_iteration``."""
        w = self.weight_orig.reshape(self.weight_orig.shape[0], -1)
        if not power_iteration:
            u, v = self.weight_u.clone(), self.weight_v.clone()
            return u, v, torch.dot(u, torch.mv(w, v))
        if torch.compiler.is_compiling():
            u, v = self._power_iteration_eager()
            return u, v, torch.dot(u, torch.mv(w, v))
        v = F.normalize(torch.mv(w.t(), self.weight_u), dim=0, eps=self.eps)
        self.weight_v.copy_(v)
        wv = torch.mv(w, v)
        u = F.normalize(wv, dim=0, eps=self.eps)
        self.weight_u.copy_(u)
        return u, v, torch.dot(u, wv)

    @torch.compiler.disable
    @torch.no_grad()
    def _power_iteration_eager(self) -> tuple[Tensor, Tensor]:
        """The power-iteration update outside any compiled graph (a graph break under torch.compile): inductor
        otherwise lets the saved u, v alias the buffers they are copied into, which the next call (D runs three
        times before its backward) overwrites -- "modified by an inplace operation" in the backward."""
        w = self.weight_orig.reshape(self.weight_orig.shape[0], -1)
        v = F.normalize(torch.mv(w.t(), self.weight_u), dim=0, eps=self.eps)
        self.weight_v.copy_(v)
        u = F.normalize(torch.mv(w, v), dim=0, eps=self.eps)
        self.weight_u.copy_(u)
        return u, v

    def __getattr__(self, name: str):
        if name == "weight":
            with torch.no_grad():
                return self.weight_orig / self._sigma(power_iteration=False)
        return super().__getattr__(name)

    def output_numel(self, x: Tensor) -> int:
        """Elements of the output for input ``x`` (B, C, H, W)."""
        return conv_output_numel(x, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation)

    def scales_output(self, x: Tensor) -> bool:
        """True when this call divides the output rather than the weight by sigma."""
        if self.scale != "auto":
            return self.scale == "output"
        return weight_bound(x, self.weight_orig, self.output_numel(x))

    def forward(self, x: Tensor) -> Tensor:
        n = self.output_numel(x)
        x = arrange_input(x, self.weight_orig, n, self.input_layout)
        if autocast_active(x) and autocast_keeps_fp32(x, self.weight_orig, n):
            with torch.autocast(x.device.type, enabled=False):
                return self._forward(x.float())
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        if self.call_sizes is not None and self.training and len(self.call_sizes) > 1:
            return self._forward_consecutive(x, self.call_sizes)
        if self.scales_output(x) and self._fusable(x):
            u, v, sigma = self._constants(power_iteration=self.training)
            return _OutputScaledConv.apply(x, self.weight_orig, self.bias, u, v, sigma, self.stride, self.padding,
                                           self.dilation, self.groups, None, *self._gemm_args(x))
        sigma = self._sigma(power_iteration=self.training)
        if not self.scales_output(x):
            if self._gemm(x):  # as matrix products (in practice a pointwise layer on a large map)
                return gemm_conv2d(x, self.weight_orig / sigma, self.bias, self.stride, self.padding, self.dilation)
            return F.conv2d(x, self.weight_orig / sigma, self.bias, self.stride, self.padding, self.dilation,
                            self.groups)
        return self._divided_plus_bias(self._unscaled_conv(x), torch.reciprocal(sigma))

    def _gemm(self, x: Tensor) -> bool:
        """Whether this call runs as matrix products (:func:`gensynth.nn.gemm_conv.prefers_matrix_products`)."""
        return (self.input_layout == "by_shape"
                and prefers_matrix_products(x, self.weight_orig, self.output_numel(x), self.stride, self.padding,
                                            self.groups))

    def _gemm_args(self, x: Tensor) -> tuple[bool, GradientBuffer | None]:
        """(gemm, grad_buffer) for :class:`_OutputScaledConv`."""
        gemm = self._gemm(x)
        return gemm, layer_gradient_buffer(self) if gemm else None

    def _unscaled_conv(self, x: Tensor) -> Tensor:
        """conv2d(x, weight_orig) without bias (differentiable)."""
        if self._gemm(x):
            return gemm_conv2d(x, self.weight_orig, None, self.stride, self.padding, self.dilation,
                               layer_gradient_buffer(self))
        return F.conv2d(x, self.weight_orig, None, self.stride, self.padding, self.dilation, self.groups)

    def _fusable(self, x: Tensor) -> bool:
        """Whether an output-scaled call can use :class:`_OutputScaledConv` (training in x's own precision)."""
        return (self.fused_backward and torch.is_grad_enabled() and x.dtype == self.weight_orig.dtype
                and not autocast_active(x))

    def _divided_plus_bias(self, out: Tensor, inv: Tensor) -> Tensor:
        """out * inv + bias in ``out``'s dtype; inv 0-d or (B, 1, 1, 1)."""
        inv = inv.to(out.dtype)
        if self.bias is None:
            return out * inv
        return torch.addcmul(self.bias.to(out.dtype).view(1, -1, 1, 1), out, inv)

    def _forward_consecutive(self, x: Tensor, sizes: tuple[int, ...]) -> Tensor:
        """x = the chunks of ``sizes`` concatenated: one power iteration per chunk, in order, and chunk k divided by
        the sigma after the k-th (what calling this layer on each chunk in turn computes). Always output-scaled."""
        if x.shape[0] != sum(sizes):
            raise ValueError(f"consecutive_calls: the batch has {x.shape[0]} samples but the calls' sizes "
                             f"{list(sizes)} sum to {sum(sizes)}")
        us, vs, sigmas = zip(*(self._constants(power_iteration=True) for _ in sizes))
        u, v = torch.stack(us), torch.stack(vs)
        if self._fusable(x):
            return _OutputScaledConv.apply(x, self.weight_orig, self.bias, u, v, torch.stack(sigmas), self.stride,
                                           self.padding, self.dilation, self.groups, tuple(sizes),
                                           *self._gemm_args(x))
        w = self.weight_orig.reshape(self.weight_orig.shape[0], -1)
        with torch.autocast(x.device.type, enabled=False):  # autocast would run this matmul in bf16/fp16
            sigma = ((u @ w) * v).sum(dim=1)  # (K,) u_k^T W v_k, differentiable in W
        return self._divided_plus_bias(self._unscaled_conv(x), _per_sample(torch.reciprocal(sigma), tuple(sizes)))

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s + f", scale={self.scale}"


@contextmanager
def consecutive_calls(module: nn.Module, sizes: Sequence[int]) -> Iterator[None]:
    """Inside, a forward of ``module`` on a batch of ``sum(sizes)`` samples stands for ``len(sizes)`` consecutive
    calls on its chunks (in order): every :class:`SpectralConv2d` in training mode runs one power iteration per
    chunk and divides each chunk by its own sigma, and its buffers end where the consecutive calls leave them.

    Only valid for modules whose other layers treat samples independently (no batch statistics): a discriminator
    says so with ``batch_independent = True``. Eval mode is unaffected (no power iteration, one sigma)."""
    sizes = tuple(int(n) for n in sizes)
    if any(n < 1 for n in sizes):
        raise ValueError(f"consecutive_calls: every call needs at least one sample, got sizes {list(sizes)}")
    layers = [m for m in module.modules() if isinstance(m, SpectralConv2d)]
    hooked = [name for name, m in module.named_modules()
              if hasattr(m, "weight_orig") and not isinstance(m, SpectralConv2d)]
    if hooked:
        raise ValueError(f"consecutive_calls: {hooked[0]!r} is spectral-normed by torch's hook, whose power iteration "
                         f"would run once for all the calls; use SpectralConv2d or call the module once per chunk")
    for m in layers:
        m.call_sizes = sizes
    try:
        yield
    finally:
        for m in layers:
            m.call_sizes = None
