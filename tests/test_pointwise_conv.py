"""1x1 CPU convolutions as matrix products (gensynth.nn.pointwise_conv): the rule, the values and gradients of
plain F.conv2d for every pair of input / output-gradient memory formats, the memory formats returned, the extra
rank-R weight-gradient term, and the layers (Conv2d, SpectralConv2d) that take this path under
input_layout="by_shape", outside autocast only."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import spectral_train_call
import gensynth.nn.gemm_conv as gemm_mod
from gensynth.nn.conv import Conv2d, set_input_layout
from gensynth.nn.pointwise_conv import (is_pointwise, pointwise_conv2d_backward, pointwise_conv2d_forward,
                                        prefers_pointwise)
from gensynth.nn.spectral import SpectralConv2d


def test_rule_takes_cpu_fp32_and_fp64_1x1_stride_1_unpadded_calls_only():
    x, w = torch.zeros(2, 8, 5, 5), torch.zeros(4, 8, 1, 1)
    assert prefers_pointwise(x, w, (1, 1), (0, 0))
    assert prefers_pointwise(x.double(), w.double(), (1, 1), (0, 0))
    assert is_pointwise(w, (1, 1), (0, 0))  # dilation does not enter: it has no effect on a 1x1 kernel
    assert not prefers_pointwise(x, torch.zeros(4, 8, 3, 3), (1, 1), (0, 0))
    assert not prefers_pointwise(x, torch.zeros(4, 8, 1, 3), (1, 1), (0, 0))
    assert not prefers_pointwise(x, w, (2, 2), (0, 0))
    assert not prefers_pointwise(x, w, (1, 1), (1, 1))
    assert not prefers_pointwise(x, torch.zeros(4, 4, 1, 1), (1, 1), (0, 0), groups=2)
    assert not prefers_pointwise(x.bfloat16(), w.bfloat16(), (1, 1), (0, 0))  # low precision: the library kernel
    assert not prefers_pointwise(x.double(), w, (1, 1), (0, 0))  # mixed dtypes
    assert not prefers_pointwise(torch.zeros(8, 5, 5), w, (1, 1), (0, 0))  # unbatched input
    assert not prefers_pointwise(x.to("meta"), w.to("meta"), (1, 1), (0, 0))  # CPU only


def _in_format(t: torch.Tensor, fmt: str) -> torch.Tensor:
    """``t`` stored NCHW, NHWC, or as a strided view that is neither (every other column of a wider tensor)."""
    if fmt == "nchw":
        return t.contiguous()
    if fmt == "nhwc":
        return t.contiguous(memory_format=torch.channels_last)
    wide = torch.zeros(*t.shape[:3], 2 * t.shape[3], dtype=t.dtype)
    wide[..., ::2] = t
    view = wide[..., ::2]
    assert not view.is_contiguous() and not view.is_contiguous(memory_format=torch.channels_last)
    return view


FORMATS = ["nchw", "nhwc", "strided"]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("x_format", FORMATS)
@pytest.mark.parametrize("grad_format", FORMATS)
def test_values_gradients_and_memory_formats_equal_conv2d(batch, x_format, grad_format):
    torch.manual_seed(0)
    x = _in_format(torch.randn(batch, 6, 4, 5, dtype=torch.float64), x_format)
    weight = torch.randn(7, 6, 1, 1, dtype=torch.float64)
    y = pointwise_conv2d_forward(x, weight)
    torch.testing.assert_close(y, F.conv2d(x, weight), rtol=1e-12, atol=1e-12)
    nhwc_in = x_format == "nhwc"
    assert y.is_contiguous(memory_format=torch.channels_last if nhwc_in else torch.contiguous_format)

    g = _in_format(torch.randn(batch, 7, 4, 5, dtype=torch.float64), grad_format)
    gx, gw = pointwise_conv2d_backward(g, x, weight, True, True)
    xr, wr = x.detach().clone().requires_grad_(), weight.clone().requires_grad_()
    gx_ref, gw_ref = torch.autograd.grad(F.conv2d(xr, wr), (xr, wr), g)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-12, atol=1e-12)
    assert gw.shape == weight.shape and gw.is_contiguous()
    assert gx.is_contiguous(memory_format=torch.channels_last if nhwc_in else torch.contiguous_format)


def test_a_1x1_map_is_treated_as_nchw_and_still_correct():
    torch.manual_seed(1)
    x, weight = torch.randn(3, 5, 1, 1, dtype=torch.float64), torch.randn(2, 5, 1, 1, dtype=torch.float64)
    y = pointwise_conv2d_forward(x, weight)
    assert y.shape == (3, 2, 1, 1) and y.is_contiguous()
    torch.testing.assert_close(y, F.conv2d(x, weight), rtol=1e-12, atol=1e-12)


def test_extra_rank_term_and_partial_gradients():
    """The extra term adds left @ right to the weight gradient only; need_input/need_weight skip a product."""
    torch.manual_seed(2)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(5, 4, 1, 1, dtype=torch.float64)
    g = torch.randn(2, 5, 3, 3, dtype=torch.float64)
    left, right = torch.randn(5, 2, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    gx, gw = pointwise_conv2d_backward(g, x, weight, True, True)
    gx2, gw2 = pointwise_conv2d_backward(g, x, weight, True, True, (left, right))
    torch.testing.assert_close(gx2, gx, rtol=0, atol=0)
    torch.testing.assert_close(gw2, gw + (left @ right).view_as(gw), rtol=1e-12, atol=1e-12)
    assert (left @ right).abs().min() > 0
    none_x, only_w = pointwise_conv2d_backward(g, x, weight, False, True)
    only_x, none_w = pointwise_conv2d_backward(g, x, weight, True, False)
    assert none_x is None and none_w is None
    torch.testing.assert_close(only_w, gw, rtol=0, atol=0)
    torch.testing.assert_close(only_x, gx, rtol=0, atol=0)


@pytest.fixture
def pointwise_calls(monkeypatch):
    """Counts the pointwise forwards the layers run (all of them go through gemm_conv2d_forward)."""
    import gensynth.nn.spectral as spectral_mod

    calls = []
    real = gemm_mod.gemm_conv2d_forward

    def spy(x, weight, *args, **kwargs):
        if weight.shape[-2:] == (1, 1):
            calls.append(tuple(x.shape))
        return real(x, weight, *args, **kwargs)

    monkeypatch.setattr(gemm_mod, "gemm_conv2d_forward", spy)
    monkeypatch.setattr(spectral_mod, "gemm_conv2d_forward", spy)
    return calls


def test_conv2d_1x1_takes_the_path_by_shape_and_outside_autocast_only(pointwise_calls):
    torch.manual_seed(3)
    ref = torch.nn.Conv2d(16, 24, 1)
    ours = Conv2d(16, 24, 1)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 16, 8, 8)  # 64 positions per channel at 16 channels: read NHWC by shape
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y = ref(xr), ours(xo)
    assert pointwise_calls == [(3, 16, 8, 8)]
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.linspace(-1, 1, y.numel()).view_as(y)
    y_ref.backward(g), y.backward(g)
    for a, b in ((xo.grad, xr.grad), (ours.weight.grad, ref.weight.grad), (ours.bias.grad, ref.bias.grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a compute-bound call keeps autocast's bf16 kernel
        assert ours(x).dtype == torch.bfloat16
    set_input_layout(ours, "keep")
    ours(x)
    assert len(pointwise_calls) == 1


def test_spectral_1x1_matches_the_convolution_in_both_scalings(pointwise_calls):
    """A spectral-norm 1x1 layer (OASIS's learned shortcuts) on a large map scales the weight; merged into
    consecutive calls it scales each chunk's output: both as matrix products, equal to the "keep" layer's outputs,
    gradients and power-iteration buffers."""
    torch.manual_seed(4)
    keep = SpectralConv2d(16, 8, 1)
    ours = copy.deepcopy(keep)
    set_input_layout(keep, "keep")
    x = torch.randn(3, 16, 8, 8)
    for sizes in (None, [1, 1, 1]):
        results = [(*spectral_train_call(m, x, sizes), m.weight_u, m.weight_v) for m in (keep, ours)]
        for a, b in zip(*results):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        keep.zero_grad(set_to_none=True), ours.zero_grad(set_to_none=True)
    assert pointwise_calls == [(3, 16, 8, 8)] * 2
