"""Weight-bound CPU convolutions as matrix products (gensynth.nn.gemm_conv): the rule, the values and gradients of
plain F.conv2d for every geometry, the fused rank-R weight-gradient term, the second derivative, and the layers
(Conv2d, SpectralConv2d) that take this path under input_layout="by_shape" and leave it under "keep"."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import spectral_train_call
import gensynth.nn.gemm_conv as gemm_mod
from gensynth.nn.conv import Conv2d, set_input_layout
from gensynth.nn.gemm_conv import (GEMM_WEIGHT_PER_OUTPUT, gemm_conv2d, gemm_conv2d_backward, gemm_conv2d_forward,
                                   prefers_gemm)
from gensynth.nn.spectral import SpectralConv2d


def test_rule_compares_weight_and_output_elements_on_cpu_fp32_only():
    w = torch.zeros(16, 8, 3, 3)  # 1152 elements
    limit = w.numel() / GEMM_WEIGHT_PER_OUTPUT
    x = torch.zeros(1, 8, 2, 2)
    assert prefers_gemm(x, w, int(limit) - 1)
    assert not prefers_gemm(x, w, int(limit) + 1)
    assert not prefers_gemm(x, w, 1, groups=2)
    assert not prefers_gemm(x.bfloat16(), w.bfloat16(), 1)  # low precision keeps the library convolution
    assert not prefers_gemm(x.double(), w, 1)  # mixed dtypes
    assert prefers_gemm(x.double(), w.double(), 1)
    assert not prefers_gemm(torch.zeros(8, 2, 2), w, 1)  # unbatched input
    # OASIS's deepest generator layer at batch 1: 1024 -> 1024 on 4x8 (288 weight elements per output element)
    big = torch.empty(1024, 1024, 3, 3, device="meta")
    assert prefers_gemm(torch.empty(1, 1024, 4, 8), big, 1024 * 32)
    assert not prefers_gemm(torch.empty(1, 1024, 64, 128), big, 1024 * 64 * 128)


GEOMETRIES = [  # (batch, in, out, H, W, kernel, stride, padding, dilation)
    (1, 6, 5, 4, 7, (3, 3), (1, 1), (1, 1), (1, 1)),
    (3, 6, 5, 4, 7, (3, 3), (1, 1), (1, 1), (1, 1)),
    (2, 4, 3, 9, 8, (3, 3), (2, 2), (1, 1), (1, 1)),
    (2, 4, 3, 9, 8, (3, 1), (1, 2), (2, 0), (1, 1)),
    (2, 4, 3, 9, 9, (3, 3), (1, 1), (2, 2), (2, 2)),
    (2, 4, 3, 5, 6, (1, 1), (1, 1), (0, 0), (1, 1)),
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "b{}_{}to{}_{}x{}_k{}_s{}_p{}_d{}".format(*g))
@pytest.mark.parametrize("bias", [True, False])
def test_gemm_conv2d_equals_conv2d_values_and_gradients(geometry, bias):
    b, cin, cout, h, w, k, s, p, d = geometry
    torch.manual_seed(0)
    x = torch.randn(b, cin, h, w, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(cout, cin, *k, dtype=torch.float64, requires_grad=True)
    bias_t = torch.randn(cout, dtype=torch.float64, requires_grad=True) if bias else None
    ref = F.conv2d(x, weight, bias_t, s, p, d)
    out = gemm_conv2d(x, weight, bias_t, s, p, d)
    assert out.shape == ref.shape and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    inputs = [t for t in (x, weight, bias_t) if t is not None]
    for got, want in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert got.shape == want.shape


def test_gemm_conv2d_reads_a_channels_last_input_and_keeps_fp32_accuracy():
    torch.manual_seed(1)
    x = torch.randn(2, 8, 3, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(16, 8, 3, 3, requires_grad=True)
    out, ref = gemm_conv2d(x, weight, None, (1, 1), (1, 1), (1, 1)), F.conv2d(x, weight, padding=1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    gx, gw = torch.autograd.grad(out.square().sum(), (x, weight))
    rx, rw = torch.autograd.grad(ref.square().sum(), (x, weight))
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-4)
    assert gw.is_contiguous()


def test_backward_adds_the_extra_rank_term_inside_the_weight_product():
    torch.manual_seed(2)
    x, weight = torch.randn(3, 4, 3, 3, dtype=torch.float64), torch.randn(5, 4, 3, 3, dtype=torch.float64)
    grad = torch.randn(3, 5, 3, 3, dtype=torch.float64)
    left, right = torch.randn(5, 2, dtype=torch.float64), torch.randn(2, 36, dtype=torch.float64)
    conf = ((1, 1), (1, 1), (1, 1))
    gx, gw = gemm_conv2d_backward(grad, x, weight, *conf, True, True)
    gx2, gw2 = gemm_conv2d_backward(grad, x, weight, *conf, True, True, (left, right))
    torch.testing.assert_close(gx2, gx, rtol=0, atol=0)
    torch.testing.assert_close(gw2, gw + (left @ right).view_as(gw), rtol=1e-12, atol=1e-12)
    _, rw, _ = torch.ops.aten.convolution_backward(grad, x, weight, None, (1, 1), (1, 1), (1, 1), False, [0, 0], 1,
                                                    [False, True, False])
    torch.testing.assert_close(gw, rw, rtol=1e-12, atol=1e-12)
    none_x, only_w = gemm_conv2d_backward(grad, x, weight, *conf, False, True)
    assert none_x is None and torch.equal(only_w, gw)
    y = gemm_conv2d_forward(x, weight, *conf)
    torch.testing.assert_close(y, F.conv2d(x, weight, padding=1), rtol=1e-12, atol=1e-12)


def test_second_derivative_through_the_differentiable_backward():
    """A gradient penalty (create_graph=True) differentiates the plain convolution: same second derivatives."""
    torch.manual_seed(3)
    weight = torch.randn(6, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    results = []
    for conv in (lambda x: gemm_conv2d(x, weight, None, (1, 1), (1, 1), (1, 1)), lambda x: F.conv2d(x, weight,
                                                                                                   padding=1)):
        x = torch.linspace(-1, 1, 2 * 3 * 4 * 4, dtype=torch.float64).view(2, 3, 4, 4).requires_grad_()
        (gx,) = torch.autograd.grad(conv(x).tanh().sum(), x, create_graph=True)
        results.append(torch.autograd.grad(gx.square().sum(), weight)[0])
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-12)
    assert results[0].abs().sum() > 0


def test_mismatched_shapes_are_named():
    with pytest.raises(ValueError, match=r"input \(1, 3, 4, 4\) and weight \(2, 4, 3, 3\) do not match"):
        gemm_conv2d(torch.zeros(1, 3, 4, 4), torch.zeros(2, 4, 3, 3), None, (1, 1), (1, 1), (1, 1))


@pytest.fixture
def gemm_calls(monkeypatch):
    """Counts the matrix-product forwards the layers run."""
    calls = []
    real = gemm_mod.gemm_conv2d_forward

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(gemm_mod, "gemm_conv2d_forward", spy)
    import gensynth.nn.spectral as spectral_mod
    monkeypatch.setattr(spectral_mod, "gemm_conv2d_forward", spy)
    return calls


def test_conv2d_takes_the_gemm_path_by_shape_only(gemm_calls):
    torch.manual_seed(4)
    ref = torch.nn.Conv2d(32, 32, 3, padding=1)  # 9216 weight elements, output 32 * 2 * 2 = 128: 72 per output
    ours = Conv2d(32, 32, 3, padding=1)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 32, 2, 2)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y = ref(xr), ours(xo)
    assert len(gemm_calls) == 1
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    y_ref.sum().backward(), y.sum().backward()
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # weight-bound under autocast: fp32, as matrix products
        assert ours(x).dtype == torch.float32
    assert len(gemm_calls) == 2
    ours(torch.randn(4, 32, 8, 8))  # 8192 outputs: a convolution
    set_input_layout(ours, "keep")
    ours(x)
    assert len(gemm_calls) == 2


def _spectral_pair(monkeypatch, fused: bool) -> tuple[SpectralConv2d, SpectralConv2d]:
    monkeypatch.setattr(SpectralConv2d, "fused_backward", fused)
    torch.manual_seed(5)
    keep = SpectralConv2d(64, 64, 3, padding=1)  # 36864 weight elements
    ours = copy.deepcopy(keep)
    set_input_layout(keep, "keep")
    return keep, ours


@pytest.mark.parametrize("fused", [True, False])
def test_spectral_conv_gemm_path_matches_the_convolution(fused, monkeypatch, gemm_calls):
    """Output-scaled spectral norm as matrix products (the fused backward puts sigma's rank-1 weight gradient into
    the weight product): the same outputs, u/v and gradients as the convolution path, in training and eval."""
    keep, ours = _spectral_pair(monkeypatch, fused)
    x = torch.randn(1, 64, 2, 3)  # 384 outputs: 96 weight elements per output
    outs = [spectral_train_call(m, x) for m in (keep, ours)]
    assert len(gemm_calls) == 1
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert ours.weight_orig.grad.is_contiguous()
    torch.testing.assert_close(ours.weight_u, keep.weight_u, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), keep.eval()(x), rtol=1e-5, atol=1e-5)
    assert len(gemm_calls) == 2


@pytest.mark.parametrize("fused", [True, False])
def test_spectral_conv_gemm_path_in_consecutive_calls(fused, monkeypatch, gemm_calls):
    """Three calls merged into one batch (each chunk its own power iteration and sigma): the same as the
    convolution path, with sigma's rank-3 weight-gradient term inside the weight product."""
    keep, ours = _spectral_pair(monkeypatch, fused)
    x = torch.randn(3, 64, 1, 2)
    grads = [(*spectral_train_call(m, x, [1, 1, 1]), m.weight_u, m.weight_v) for m in (keep, ours)]
    assert len(gemm_calls) == 1 and gemm_calls[0] == (3, 64, 1, 2)
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
