"""Convolutions of the factored [noise ; one-hot labels] map equal the dense convolution (values and gradients)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gensynth.interfaces import Condition, one_hot
from gensynth.nn.label_conv import SegInput, seg_conv2d


def _close(a, b, rel=1e-5):
    return (a - b).abs().max() <= rel * b.abs().max().clamp_min(1e-6)


@pytest.mark.parametrize("noise", ["none", "vector", "spatial"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_factored_conv_equals_dense_conv(noise, k):
    torch.manual_seed(0)
    n, zd = 7, 3
    ids = torch.randint(0, n, (2, 6, 5))
    z = {"none": None, "vector": torch.randn(2, zd, requires_grad=True),
         "spatial": torch.randn(2, zd, 6, 5, requires_grad=True)}[noise]
    seg = SegInput(ids, n, z)
    conv = nn.Conv2d((0 if z is None else zd) + n, 4, k, padding=k // 2)
    dense = seg.dense()
    assert dense.shape == seg.shape == (2, conv.in_channels, 6, 5)
    assert torch.equal(dense[:, -n:], one_hot(ids, n))
    ref, got = conv(dense), seg_conv2d(conv, seg)
    assert _close(got, ref)
    g = torch.randn_like(ref)
    wanted = [conv.weight, conv.bias] + ([z] if z is not None else [])
    for a, b in zip(torch.autograd.grad((ref * g).sum(), wanted), torch.autograd.grad((got * g).sum(), wanted)):
        assert _close(b, a)


def test_resized_picks_the_pixels_of_nearest_interpolation():
    seg = SegInput(torch.randint(0, 5, (1, 12, 20)), 5, torch.randn(1, 2, 12, 20))
    for size in [(6, 10), (3, 5), (5, 7), (12, 20)]:
        assert torch.equal(seg.resized(size).dense(), F.interpolate(seg.dense(), size=size, mode="nearest"))


def test_unsupported_convolutions_and_channel_mismatch_are_named():
    seg = SegInput(torch.zeros(1, 4, 4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="stride-1, same-padded, odd-kernel"):
        seg_conv2d(nn.Conv2d(3, 2, 3, stride=2, padding=1), seg)
    with pytest.raises(ValueError, match="takes 5 channels, the label map has 0 noise \\+ 3 label channels"):
        seg_conv2d(nn.Conv2d(5, 2, 3, padding=1), seg)


@pytest.mark.parametrize("spatial", [False, True])
def test_oasis_generator_factored_path_equals_the_dense_path(spatial):
    from gensynth_oasis.generator import build_oasis_generator

    torch.manual_seed(0)
    G = build_oasis_generator(6, channels=2, num_res_blocks=3, z_dim=3, spade_hidden=8)
    ids = torch.randint(0, 6, (2, 16, 16))
    z = torch.randn(2, 3, 4, 4) if spatial else torch.randn(2, 3)
    outs, grads = [], []
    for with_ids in (False, True):
        G.zero_grad()
        cond = Condition(one_hot(ids, 6), ids=ids if with_ids else None)
        state = {k: v.clone() for k, v in G.state_dict().items()}
        out = G(cond, z).image
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append({k: p.grad.clone() for k, p in G.named_parameters()})
        G.load_state_dict(state)  # undo the BN-statistics and power-iteration updates of this call
    assert _close(outs[1], outs[0])
    scale = max(g.abs().max() for g in grads[0].values())  # biases before BN get ~0 (rounding) gradients
    for k in grads[0]:
        assert (grads[1][k] - grads[0][k]).abs().max() <= 1e-5 * scale, k
    # the noise draws are the same when z is not given (different draws would differ by O(1); an untrained
    # generator in eval mode amplifies rounding to ~1e-4 near tanh's saturation)
    torch.manual_seed(3)
    a = G.eval()(Condition(one_hot(ids, 6))).image
    torch.manual_seed(3)
    b = G(Condition(one_hot(ids, 6), ids=ids)).image
    assert (a - b).abs().max() < 1e-3


@pytest.mark.parametrize("noise", [False, True])
def test_label_gather_gradient_is_summed_per_tap_and_differentiable_twice(noise):
    """The factored convolution's weight gradient (label part summed tap by tap with index_add_, noise part per
    tap, both written into one weight-shaped tensor) equals the dense convolution's, also as a graph for a
    second derivative (e.g. a gradient penalty on the weights), and so does the noise gradient."""
    torch.manual_seed(0)
    ids = torch.randint(0, 5, (2, 6, 5))
    ids[0, 0, 0] = 4  # a class on the border: its taps outside the image read the zero rows
    z = torch.randn(2, 3, dtype=torch.float64, requires_grad=True) if noise else None
    seg = SegInput(ids, 5, z)
    conv = nn.Conv2d(5 + (3 if noise else 0), 4, 3, padding=1).double()
    wrt = [conv.weight] + ([z] if noise else [])
    results = []
    for forward in (lambda: conv(seg.dense(torch.float64)), lambda: seg_conv2d(conv, seg)):
        grads = torch.autograd.grad((forward() ** 2).sum(), wrt, create_graph=True)
        second = torch.autograd.grad(sum((g ** 2).sum() for g in grads), wrt)
        results.append(([g.detach() for g in grads], second))
    (g_ref, gg_ref), (g_got, gg_got) = results
    for a, b in zip(g_ref + list(gg_ref), g_got + list(gg_got)):
        assert a.abs().max() > 1
        assert torch.allclose(b, a, rtol=1e-12, atol=1e-10)
    assert g_got[0].shape == conv.weight.shape and g_got[0].is_contiguous()


def test_factored_conv_weight_gradient_layout_per_channel_and_tap():
    """Each weight element's gradient is the sum of the output gradient over the pixels whose tap reads it: a
    label channel's at tap (i, j) over pixels whose neighbour at offset (i-1, j-1) has that class, a noise
    channel's over pixels where that tap is inside the image, times the noise value."""
    ids = torch.tensor([[[0, 1, 1], [2, 0, 1]]])  # (1, 2, 3)
    z = torch.tensor([[2.0, -1.0]])
    weight = torch.zeros(1, 5, 3, 3, requires_grad=True)
    seg = SegInput(ids, 3, z)
    conv = nn.Conv2d(5, 1, 3, padding=1, bias=False)
    conv.weight = nn.Parameter(weight)
    grad = torch.arange(1.0, 7.0).view(1, 1, 2, 3)
    (g,) = torch.autograd.grad(seg_conv2d(conv, seg), conv.weight, grad)
    # label 1 (channel 2 + 1 = 3) at the centre tap: pixels (0, 1), (0, 2), (1, 2) -> 2 + 3 + 6
    assert g[0, 3, 1, 1] == 11
    # label 2 (channel 4) at tap (2, 0) (neighbour one row down, one column left): pixel (0, 1) reads (1, 0)
    assert g[0, 4, 2, 0] == 2
    # noise channel 0 at tap (0, 0): pixels with an upper-left neighbour, (1, 1) and (1, 2) -> (5 + 6) * 2.0
    assert g[0, 0, 0, 0] == 22 and g[0, 1, 0, 0] == -11
    # the centre tap of a noise channel sees every pixel
    assert g[0, 1, 1, 1] == -21


def test_factored_conv_under_autocast_returns_autocast_dtype_close_to_the_dense_conv():
    torch.manual_seed(0)
    ids = torch.randint(0, 7, (2, 8, 6))
    z = torch.randn(2, 3, requires_grad=True)
    seg = SegInput(ids, 7, z)
    conv = nn.Conv2d(10, 16, 3, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, ref = seg_conv2d(conv, seg), conv(seg.dense())
    assert got.dtype == ref.dtype == torch.bfloat16 and got.shape == ref.shape == (2, 16, 8, 6)
    exact = conv(seg.dense())  # fp32
    assert (got.float() - exact).abs().max() <= 2 ** -7 * exact.abs().max()  # one bf16 rounding of the fp32 sum
    assert (ref.float() - exact).abs().max() <= 2 ** -5 * exact.abs().max()  # bf16 products, bf16 output
    g = torch.randn(2, 16, 8, 6)
    for a, b in zip(torch.autograd.grad((got.float() * g).sum(), [conv.weight, conv.bias, z]),
                    torch.autograd.grad((exact * g).sum(), [conv.weight, conv.bias, z])):
        assert a.dtype == torch.float32 and _close(a, b, rel=1e-2)
