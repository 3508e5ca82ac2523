"""Per-call memory format of gensynth's convolutions (gensynth.nn.conv.arrange_input, input_layout="by_shape").

A convolution whose map is large for its channel count reads an NHWC input, a weight-heavy small-map one an NCHW
input; the values are those of plain nn.Conv2d up to summation order, and parameters stay NCHW."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import spectral_train_call
from gensynth.nn.conv import (CHANNELS_LAST_POSITIONS_PER_CHANNEL, Conv2d, arrange_input, prefers_channels_last,
                              set_input_layout)
from gensynth.nn.label_conv import SegInput, seg_conv2d
from gensynth.nn.spectral import SpectralConv2d
from gensynth.train.speed import apply_memory_layout, resolve_channels_last

CL = torch.channels_last


def _is_nhwc(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=CL) and not t.is_contiguous()


def test_rule_counts_output_positions_per_input_channel():
    w = torch.zeros(16, 8, 3, 3)
    need = int(CHANNELS_LAST_POSITIONS_PER_CHANNEL * 8)  # positions B*H'*W' for NHWC
    assert prefers_channels_last(w, 16 * need)
    assert not prefers_channels_last(w, 16 * (need - 1))
    # OASIS's weight-heavy layers stay NCHW: 1024 channels on a 4x8 map at batch 1
    assert not prefers_channels_last(torch.empty(1024, 1024, 3, 3, device="meta"), 1024 * 32)
    assert prefers_channels_last(torch.empty(128, 128, 3, 3, device="meta"), 128 * 64 * 128)


def test_arrange_input_formats_and_the_cases_it_leaves_alone():
    w = torch.zeros(4, 4, 3, 3)
    big, small = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 2, 2)  # 64 and 4 positions; NHWC from 8 * 4 = 32
    out_big = arrange_input(big, w, 4 * 64, "by_shape")
    assert _is_nhwc(out_big) and torch.equal(out_big, big)
    out_small = arrange_input(small.contiguous(memory_format=CL), w, 4 * 4, "by_shape")
    assert out_small.is_contiguous() and torch.equal(out_small, small)
    assert arrange_input(big, w, 4 * 64, "keep") is big
    w_nhwc = torch.zeros(4, 4, 3, 3).contiguous(memory_format=CL)  # a whole-NHWC model: left as it is
    assert arrange_input(big, w_nhwc, 4 * 64, "by_shape") is big
    already = big.contiguous(memory_format=CL)
    assert arrange_input(already, w, 4 * 64, "by_shape") is already  # no copy when it is in the format already


@pytest.mark.parametrize("size,nhwc", [(16, True), (2, False)])
def test_conv2d_by_shape_matches_nn_conv2d_values_and_gradients(size, nhwc):
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(6, 5, 3, padding=1)
    ours = Conv2d(6, 5, 3, padding=1)
    ours.load_state_dict(ref.state_dict())
    assert ours.input_layout == "by_shape"  # gensynth's default
    x = torch.randn(2, 6, size, size, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y_ref, y = ref(x), ours(x2)
    assert _is_nhwc(y) is nhwc
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y_ref)
    y_ref.backward(g), y.backward(g)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)
    assert ours.weight.grad.is_contiguous()  # the parameter's own layout, as the optimiser expects


@pytest.mark.parametrize("size,output_scaled", [(4, True), (12, False)])
@pytest.mark.parametrize("fused", [True, False])
def test_spectral_conv_by_shape_matches_keep(fused, size, output_scaled, monkeypatch):
    """Spectral norm on an NHWC input, output-scaled (fused backward or autograd) or weight-scaled: the same values,
    u/v and gradients as on NCHW, and an NCHW weight gradient (the fused backward adds its rank-1 term in place)."""
    monkeypatch.setattr(SpectralConv2d, "fused_backward", fused)
    torch.manual_seed(0)
    keep = SpectralConv2d(4, 3, 3, padding=1)
    ours = copy.deepcopy(keep)
    set_input_layout(keep, "keep")
    x = torch.randn(2, 4, size, size)  # 2*4*4 = 32 positions = 8 per input channel: NHWC, output < weight
    assert keep.scales_output(x) is output_scaled
    outs = [spectral_train_call(m, x) for m in (keep, ours)]
    assert _is_nhwc(outs[1][0]) and outs[0][0].is_contiguous()
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert ours.weight_orig.grad.is_contiguous()
    torch.testing.assert_close(ours.weight_u, keep.weight_u, rtol=0, atol=1e-6)


def test_fused_output_scaled_backward_on_nhwc_input_gives_nchw_weight_gradient():
    """The weight-bound (output-scaled) path with an NHWC input, as a 'keep' layer would see one: the fused backward
    turns the NHWC weight gradient of mkldnn into the parameter's NCHW layout before adding sigma's term."""
    torch.manual_seed(1)
    a = SpectralConv2d(8, 16, 3, padding=1)
    b = copy.deepcopy(a)
    set_input_layout(a, "keep"), set_input_layout(b, "keep")
    x = torch.randn(1, 8, 2, 2)
    assert a.scales_output(x)
    ya, yb = a(x), b(x.contiguous(memory_format=CL))
    ya.sum().backward(), yb.sum().backward()
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-6)
    assert b.weight_orig.grad.is_contiguous()
    torch.testing.assert_close(b.weight_orig.grad, a.weight_orig.grad, rtol=1e-5, atol=1e-6)


def test_seg_conv2d_by_shape_returns_the_gather_layout_with_the_same_values():
    torch.manual_seed(0)
    conv = Conv2d(3 + 5, 7, 3, padding=1)
    seg = SegInput(torch.randint(0, 5, (2, 9, 11)), 5, torch.randn(2, 3))
    dense = F.conv2d(seg.dense(), conv.weight, conv.bias, padding=1)
    out = seg_conv2d(conv, seg)
    assert _is_nhwc(out)
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)
    conv.input_layout = "keep"
    kept = seg_conv2d(conv, seg)
    assert kept.is_contiguous()
    torch.testing.assert_close(kept, dense, rtol=1e-5, atol=1e-5)


def test_set_input_layout_and_trainer_setting():
    net = torch.nn.Sequential(Conv2d(3, 4, 3), torch.nn.ReLU(), SpectralConv2d(4, 4, 3), torch.nn.Conv2d(4, 4, 1))
    assert set_input_layout(net, "keep") == 2  # torch's own nn.Conv2d has no such attribute and is not counted
    assert net[0].input_layout == net[2].input_layout == "keep"
    with pytest.raises(ValueError, match="input_layout must be 'keep' or 'by_shape', got 'nhwc'"):
        set_input_layout(net, "nhwc")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_channels_last("auto", cpu) == "by_shape" and resolve_channels_last("auto", cuda) == "nhwc"
    assert resolve_channels_last(True, cpu) == "nhwc" and resolve_channels_last(False, cuda) == "nchw"
    assert resolve_channels_last("by_shape", cuda) == "by_shape"
    apply_memory_layout(net, "by_shape")
    assert net[0].input_layout == "by_shape"
    apply_memory_layout(net, "nhwc")  # the whole model NHWC, every convolution takes its input as it comes
    assert net[0].weight.is_contiguous(memory_format=CL) and not net[0].weight.is_contiguous()
    assert net[0].input_layout == net[2].input_layout == "keep"
