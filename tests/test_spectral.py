"""SpectralConv2d computes torch.nn.utils.spectral_norm(nn.Conv2d) -- same keys, draws, power iteration, results."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import spectral_norm

from gensynth.nn.conv import AUTOCAST_FP32_RATIO
from gensynth.nn.spade import maybe_sn
from gensynth.nn.spectral import SpectralConv2d, consecutive_calls


def _pair(cin=6, cout=5, k=3, bias=True, scale="auto", seed=0):
    torch.manual_seed(seed)
    ref = spectral_norm(nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias))
    torch.manual_seed(seed)
    ours = SpectralConv2d.from_conv(nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias), scale=scale)
    return ref, ours


def test_same_keys_and_initial_draws_as_torch_hook():
    ref, ours = _pair()
    sr, so = ref.state_dict(), ours.state_dict()
    assert list(so) == list(sr) == ["bias", "weight_orig", "weight_u", "weight_v"]
    for k in sr:
        assert torch.equal(sr[k], so[k]), k
    x = torch.randn(1, 6, 4, 4)
    ref(x), ours(x)  # the hook's ``weight`` is the raw weight until its first call
    assert torch.allclose(ours.weight, ref.weight, rtol=1e-6, atol=0)
    assert not torch.allclose(ours.weight, ours.weight_orig)


@pytest.mark.parametrize("scale", ["weight", "output", "auto"])
@pytest.mark.parametrize("bias", [True, False])
def test_training_calls_match_hook_outputs_buffers_and_gradients(scale, bias):
    ref, ours = _pair(bias=bias, scale=scale)
    torch.manual_seed(1)
    xs = [torch.randn(2, 6, 4, 4) for _ in range(3)]
    outs_r, outs_o, xr, xo = [], [], [], []
    for x in xs:  # three calls: three power-iteration updates, as D on fake, real and the LabelMix mix
        xr.append(x.clone().requires_grad_())
        xo.append(x.clone().requires_grad_())
        outs_r.append(ref(xr[-1]))
        outs_o.append(ours(xo[-1]))
        assert torch.equal(ours.weight_u, ref.weight_u) and torch.equal(ours.weight_v, ref.weight_v)
    for a, b in zip(outs_r, outs_o):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    g = torch.randn(3, 2, 5, 4, 4)
    sum((o * g[i]).sum() for i, o in enumerate(outs_r)).backward()
    sum((o * g[i]).sum() for i, o in enumerate(outs_o)).backward()
    assert torch.allclose(ours.weight_orig.grad, ref.weight_orig.grad, rtol=1e-4, atol=1e-6)
    for a, b in zip(xr, xo):
        assert torch.allclose(b.grad, a.grad, rtol=1e-4, atol=1e-6)
    if bias:
        assert torch.allclose(ours.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-6)
    # the weight form is the very same computation as the hook
    if scale == "weight":
        assert all(torch.equal(a, b) for a, b in zip(outs_r, outs_o))


@pytest.mark.parametrize("fused", [True, False])
def test_output_scaled_backward_with_frozen_weights_and_channels_last(fused, monkeypatch):
    monkeypatch.setattr(SpectralConv2d, "fused_backward", fused)
    ref, ours = _pair(scale="output")
    ref.to(memory_format=torch.channels_last), ours.to(memory_format=torch.channels_last)
    x = torch.randn(2, 6, 4, 4).contiguous(memory_format=torch.channels_last)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    (ref(xr) ** 2).sum().backward()
    (ours(xo) ** 2).sum().backward()
    assert torch.allclose(ours.weight_orig.grad, ref.weight_orig.grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(xo.grad, xr.grad, rtol=1e-4, atol=1e-6)
    ours.requires_grad_(False), ref.requires_grad_(False)  # D frozen in the G step: only the input gradient
    xr.grad = xo.grad = None
    (ref(xr) ** 2).sum().backward()
    (ours(xo) ** 2).sum().backward()
    assert torch.allclose(xo.grad, xr.grad, rtol=1e-4, atol=1e-6) and ours.weight_orig.grad is not None


def test_fused_backward_refuses_a_graph_and_the_plain_path_gives_one(monkeypatch):
    ref, ours = _pair(scale="output")
    x = torch.randn(1, 6, 4, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="first-order only.*fused_backward = False"):
        torch.autograd.grad(ours(x).square().sum(), x, create_graph=True)
    ref(x)  # the same number of power-iteration updates
    monkeypatch.setattr(SpectralConv2d, "fused_backward", False)  # e.g. an R1 penalty: second order works
    (g,) = torch.autograd.grad(ours(x).square().sum(), x, create_graph=True)
    (gr,) = torch.autograd.grad(ref(x).square().sum(), x, create_graph=True)
    g.square().sum().backward()
    gr.square().sum().backward()
    assert torch.allclose(ours.weight_orig.grad, ref.weight_orig.grad, rtol=1e-4, atol=1e-6)


def test_eval_mode_does_not_iterate_and_matches_hook():
    ref, ours = _pair(scale="output")
    x = torch.randn(1, 6, 3, 3)
    ref(x), ours(x)  # one training-mode update
    ref.eval(), ours.eval()
    u = ours.weight_u.clone()
    with torch.no_grad():
        a, b = ref(x), ours(x)
    assert torch.equal(ours.weight_u, u)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_loads_a_hook_state_dict_and_keeps_deepcopy_independent():
    ref, _ = _pair(seed=3)
    _, ours = _pair(seed=4)
    ours.load_state_dict(ref.state_dict())
    ref.eval(), ours.eval()
    x = torch.randn(2, 6, 5, 5)
    with torch.no_grad():
        assert torch.allclose(ref(x), ours(x), rtol=1e-5, atol=1e-6)
    twin = copy.deepcopy(ours)
    twin.train()(x)
    assert not torch.equal(twin.weight_u, ours.weight_u)  # the copy's power iteration left the original alone


def test_auto_scales_the_smaller_of_output_and_weight():
    deep = SpectralConv2d(512, 512, 3, padding=1)
    assert deep.scales_output(torch.empty(1, 512, 4, 4))  # output 8k numbers, weight 2.4M
    shallow = SpectralConv2d(3, 64, 3, padding=1)
    assert not shallow.scales_output(torch.empty(1, 3, 64, 64))  # output 262k, weight 1.7k
    strided = SpectralConv2d(8, 8, 4, stride=2, padding=1)
    assert strided.output_numel(torch.empty(2, 8, 16, 16)) == 2 * 8 * 8 * 8


@pytest.mark.parametrize("scale", ["weight", "output"])
def test_autocast_runs_weight_bound_calls_in_fp32_and_the_rest_in_bf16(scale):
    ref, ours = _pair(cin=24, cout=20, scale=scale)
    # outputs 40 < weight 4320 / AUTOCAST_FP32_RATIO (64) < 320 < weight < 10240
    assert 40 < 4320 / AUTOCAST_FP32_RATIO < 320
    small, mid, large = torch.randn(1, 24, 1, 2), torch.randn(1, 24, 4, 4), torch.randn(2, 24, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_small, y_mid, y_large = ours(small), ours(mid), ours(large)
        r_small, _, _ = ref(small), ref(mid), ref(large)  # the same number of power-iteration updates
    assert y_small.dtype == torch.float32 and y_mid.dtype == y_large.dtype == torch.bfloat16
    assert r_small.dtype == torch.bfloat16  # torch's hook: everything in bf16
    ref.eval(), ours.eval()
    with torch.no_grad():
        assert torch.allclose(ours(small), ref(small), rtol=1e-5, atol=1e-6)  # the fp32 result, as without autocast


def test_plain_conv_keeps_nn_conv2d_results_and_keys():
    from gensynth.nn.conv import Conv2d

    torch.manual_seed(0)
    plain = nn.Conv2d(16, 8, 3, padding=1)
    ours = Conv2d(16, 8, 3, padding=1)
    ours.load_state_dict(plain.state_dict())
    assert isinstance(ours, nn.Conv2d) and list(ours.state_dict()) == ["weight", "bias"]
    small, large = torch.randn(1, 16, 1, 2), torch.randn(2, 16, 16, 16)  # outputs 16 and 4096 vs weight 1152
    assert torch.equal(ours(large), plain(large))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(small).dtype == torch.float32 and ours(large).dtype == torch.bfloat16
        got = ours(small)
        with torch.autocast("cpu", enabled=False):
            torch.testing.assert_close(got, plain(small), rtol=1e-6, atol=1e-6)  # fp32 (as matrix products)


def test_maybe_sn_choices_and_bad_scale():
    assert isinstance(maybe_sn(nn.Conv2d(2, 3, 3, padding=1), True), SpectralConv2d)
    assert type(maybe_sn(nn.Conv2d(2, 3, 3), False)) is nn.Conv2d
    lin = maybe_sn(nn.Linear(4, 1), True)  # other layers: torch's hook, same keys
    assert {"weight_orig", "weight_u", "weight_v"} <= set(lin.state_dict())
    reflect = maybe_sn(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), True)
    assert not isinstance(reflect, SpectralConv2d) and "weight_orig" in reflect.state_dict()
    with pytest.raises(ValueError, match="scale must be 'auto', 'weight' or 'output', got 'both'"):
        SpectralConv2d(2, 3, 3, scale="both")


def _sn_stack(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(SpectralConv2d(3, 8, 3, padding=1), nn.LeakyReLU(0.2),
                         SpectralConv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.LeakyReLU(0.2),
                         SpectralConv2d(16, 4, 1))


@pytest.mark.parametrize("fused", [True, False])
def test_consecutive_calls_merge_calls_without_changing_results(fused, monkeypatch):
    """One forward on [a; b; c] inside consecutive_calls == three forwards on a, b, c: the same outputs, buffers
    (three power iterations) and gradients, also through the loss mixing the outputs (as LabelMix does)."""
    monkeypatch.setattr(SpectralConv2d, "fused_backward", fused)
    seq, merged = _sn_stack(), _sn_stack()
    merged.load_state_dict(seq.state_dict())
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(n, 3, 8, 8, generator=g) for n in (2, 1, 2)]
    weights = [torch.randn(n, 4, 4, 4, generator=g) for n in (2, 1, 2)]

    outs_seq = [seq(x) for x in xs]
    with consecutive_calls(merged, [2, 1, 2]):
        outs_merged = merged(torch.cat(xs)).split([2, 1, 2])
    for a, b in zip(outs_seq, outs_merged):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    sum((o * w).sum() for o, w in zip(outs_seq, weights)).backward()
    sum((o * w).sum() for o, w in zip(outs_merged, weights)).backward()
    for (name, p), q in zip(seq.named_parameters(), merged.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    for (name, b1), b2 in zip(seq.named_buffers(), merged.buffers()):
        torch.testing.assert_close(b2, b1, rtol=1e-5, atol=1e-7, msg=name)
    assert all(m.call_sizes is None for m in merged.modules() if isinstance(m, SpectralConv2d))


def test_consecutive_calls_differ_from_one_call_and_check_sizes():
    a, b = _sn_stack(), _sn_stack()
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 3, 8, 8)
    with consecutive_calls(a, [1, 1, 1]):
        merged = a(x)
    one = b(x)  # one power iteration for all: the second and third samples see other sigmas
    torch.testing.assert_close(merged[:1], one[:1], rtol=1e-5, atol=1e-6)
    assert (merged[2] - one[2]).abs().max() > 1e-4
    with pytest.raises(ValueError, match=r"batch has 3 samples but the calls' sizes \[1, 1\] sum to 2"):
        with consecutive_calls(a, [1, 1]):
            a(x)
    with pytest.raises(ValueError, match=r"at least one sample, got sizes \[2, 0\]"):
        with consecutive_calls(a, [2, 0]):
            pass
    a.eval()  # eval: no power iteration, one sigma, the same as a plain call
    with torch.no_grad():
        plain = a(x)
        with consecutive_calls(a, [1, 2]):
            torch.testing.assert_close(a(x), plain, rtol=0, atol=0)


def test_consecutive_calls_refuse_torch_hook_spectral_norm():
    mixed = nn.Sequential(SpectralConv2d(3, 4, 3), spectral_norm(nn.Linear(4, 2)))
    with pytest.raises(ValueError, match=r"'1' is spectral-normed by torch's hook"):
        with consecutive_calls(mixed, [1, 1]):
            pass


def test_consecutive_calls_under_autocast_match_separate_calls():
    """Compute-bound layers under bf16 autocast take the plain-autograd merged path: bf16 outputs that match the
    separate calls to bf16 rounding, and the same power-iteration buffers."""
    torch.manual_seed(0)
    seq = SpectralConv2d(8, 8, 3, padding=1, scale="weight")
    merged = copy.deepcopy(seq)
    xs = [torch.randn(1, 8, 32, 32) for _ in range(2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = [seq(x) for x in xs]
        with consecutive_calls(merged, [1, 1]):
            joint = merged(torch.cat(xs))
    assert joint.dtype == torch.bfloat16
    for a, b in zip(outs, joint.split(1)):
        torch.testing.assert_close(b.float(), a.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(merged.weight_u, seq.weight_u, rtol=1e-6, atol=1e-7)
