"""Every speed option trains the same model as the plain path, within floating-point tolerance.

Options (gensynth.train.speed, gensynth.nn.spectral, gensynth.train.ema): fused/foreach Adam, channels-last,
foreach-lerp EMA, D frozen in the G step, spectral norm on outputs (tests/test_spectral.py), the label pyramid of
the OASIS generator. Timings live in benchmarks/train_step.py, never here.
"""
from __future__ import annotations

import copy
import os
import re

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from conftest import tiny_overrides
from gensynth.checkpoint import load_checkpoint
from gensynth.config import resolve
from gensynth.train.ema import EMA
from gensynth.train.speed import make_adam, resolve_channels_last, resolve_optim_impl, set_tf32
from gensynth.train.trainer import run_training


def _train(tmp_path, cache, name, **extra):
    # the official recipe: D moves by ~lr per step from step 1 (no warm-up), so every weight is exercised
    cfg, prov = resolve(tiny_overrides(tmp_path / name, cache, **{"trainer.steps": 3, "trainer.checkpoint_every": 3,
                                                                   "trainer.sample_every": 100,
                                                                   "trainer.stable_start": False, **extra}))
    with open(os.devnull, "w") as devnull:
        run_training(cfg, prov, console=Console(file=devnull))
    ckpt = load_checkpoint(tmp_path / name)
    return {k: ckpt.state(k) for k in ("generator", "discriminator", "generator_ema")}


#: parameters whose gradient is exactly zero in theory (a bias followed by BatchNorm: the generator's ``fc`` and each
#: block's ``conv_0``), and the BN running means that follow them. Adam turns their rounding-noise gradients into
#: +-lr steps, so any change of rounding moves them by up to lr per step; nothing downstream depends on them.
_NOISE_ONLY = re.compile(r"(^fc\.bias|^body\.\d+\.conv_0\.bias|running_mean)$")

_ESTIMATES = re.compile(r"(weight_u|weight_v|running_var)$")


def _assert_same_training(ref: dict, other: dict, atol: float, steps: int = 3, lr: float = 4e-4,
                          estimate_atol: float | None = None):
    """Same keys; parameters within ``atol``; running estimates (spectral-norm u/v, BN variances) within
    ``estimate_atol`` (default 10x ``atol``); the noise-only tensors within one Adam step (lr) per step."""
    estimate_atol = 10 * atol if estimate_atol is None else estimate_atol
    for part in ref:
        assert ref[part].keys() == other[part].keys(), part
        for k, a in ref[part].items():
            b = other[part][k]
            if not a.dtype.is_floating_point:
                assert torch.equal(a, b), f"{part}.{k}"
                continue
            tol = steps * lr * 1.01 if _NOISE_ONLY.search(k) else estimate_atol if _ESTIMATES.search(k) else atol
            assert torch.allclose(a, b, rtol=0, atol=tol), f"{part}.{k}: max diff {(a - b).abs().max():.2e}"


@pytest.fixture(scope="module")
def for_loop_run(tmp_path_factory, tiny_cache):
    return _train(tmp_path_factory.mktemp("speed"), tiny_cache, "for-loop",
                  **{"optim.implementation": "for-loop", "trainer.channels_last": False})


@pytest.mark.parametrize("impl", ["fused", "foreach"])
def test_adam_kernels_train_the_same(for_loop_run, tiny_cache, tmp_path, impl):
    other = _train(tmp_path, tiny_cache, impl, **{"optim.implementation": impl, "trainer.channels_last": False})
    _assert_same_training(for_loop_run, other, atol=1e-5)
    # and the weights did move: the comparison is not between two untouched initialisations
    init = _train(tmp_path, tiny_cache, "lr0", **{"optim.implementation": impl, "trainer.channels_last": False,
                                                  "optim.lr_g": 1e-12, "optim.lr_d": 1e-12})
    moved = (for_loop_run["discriminator"]["layer_up_last.weight"] - init["discriminator"]["layer_up_last.weight"])
    assert moved.abs().max() > 1e-4


def test_channels_last_trains_the_same(for_loop_run, tiny_cache, tmp_path):
    other = _train(tmp_path, tiny_cache, "nhwc", **{"optim.implementation": "for-loop", "trainer.channels_last": True})
    # power-iteration estimates 5e-4 apart (parameters still 1e-5): with two threads one tiny D layer's v moves
    # ~1.9e-4 through its small singular gap, as in the by_shape comparison below
    _assert_same_training(for_loop_run, other, atol=1e-5, estimate_atol=5e-4)


def test_conv_layout_by_shape_trains_the_same(for_loop_run, tiny_cache, tmp_path, monkeypatch):
    """trainer.channels_last = by_shape (the CPU default): NHWC inputs for the large-map convolutions only."""
    from gensynth.nn import conv

    nhwc_calls = []
    arrange = conv.arrange_input

    def counting(x, weight, n, layout):
        out = arrange(x, weight, n, layout)
        nhwc_calls.append(out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous())
        return out

    # the tiny model's maps are all large for its channels: a higher bar puts its low-resolution layers in NCHW
    monkeypatch.setattr(conv, "CHANNELS_LAST_POSITIONS_PER_CHANNEL", 128.0)
    monkeypatch.setattr(conv, "arrange_input", counting)
    monkeypatch.setattr("gensynth.nn.spectral.arrange_input", counting)
    other = _train(tmp_path, tiny_cache, "by_shape", **{"optim.implementation": "for-loop",
                                                        "trainer.channels_last": "by_shape"})
    assert any(nhwc_calls) and not all(nhwc_calls), f"both kinds of layers expected: {sum(nhwc_calls)} NHWC calls of {len(nhwc_calls)}"
    # by_shape also upsamples from NHWC (keep: NCHW), which changes the summation order of the upsampling's
    # backward. Every parameter stays within 1e-5, but a power-iteration vector moves by about the weights'
    # difference over the gap between the layer's two largest singular values, which is small in these tiny
    # random layers: one D layer's v differed by 1.9e-4 with two OpenMP threads (5e-5 for the others).
    _assert_same_training(for_loop_run, other, atol=1e-5, estimate_atol=5e-4)


def test_merged_d_calls_train_the_same(for_loop_run, tiny_cache, tmp_path):
    """trainer.merge_d_calls (default on): the D step's three calls as one, each chunk with its own power iteration."""
    options = {"optim.implementation": "for-loop", "trainer.channels_last": False, "trainer.merge_d_calls": False}
    other = _train(tmp_path, tiny_cache, "separate", **options)
    _assert_same_training(for_loop_run, other, atol=1e-5)


def test_merged_d_step_calls_d_once_with_the_same_losses_and_gradients():
    G, D, method, real, cond = _tiny_parts_and_batch()
    results = {}
    for merge in (False, True):
        d, gen = copy.deepcopy(D), copy.deepcopy(G)  # both: G's spectral norm iterates on every call too
        calls = []
        d.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
        method.merge_d_calls = merge
        torch.manual_seed(2)  # the same noise and LabelMix mask
        losses = method.d_losses(gen, d, real, cond)
        sum(losses.values()).backward()
        results[merge] = (losses, {k: p.grad for k, p in d.named_parameters()}, dict(d.named_buffers()), calls)
    (l0, g0, b0, c0), (l1, g1, b1, c1) = results[False], results[True]
    assert c0 == [2, 2, 2] and c1 == [6]
    assert l0.keys() == l1.keys() == {"D_fake", "D_real", "labelmix"}
    for k in l0:
        torch.testing.assert_close(l1[k], l0[k], rtol=1e-5, atol=1e-6, msg=k)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-8, msg=k)
    for k in b0:
        torch.testing.assert_close(b1[k], b0[k], rtol=1e-5, atol=1e-7, msg=k)
    assert l0["labelmix"] > 0


def _tiny_parts_and_batch():
    from gensynth.build import build_discriminator, build_generator, build_method, resolve_parts
    from gensynth.interfaces import Condition

    model_keys = {k: v for k, v in tiny_overrides("unused", "unused").items() if k.startswith(("model.", "data.s"))}
    cfg, _ = resolve(model_keys)
    parts = resolve_parts(cfg)
    torch.manual_seed(0)
    G, D = build_generator(parts), build_discriminator(parts)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, parts.num_classes, (2, 32, 32), generator=g)
    cond = Condition(F.one_hot(ids, parts.num_classes).permute(0, 3, 1, 2).float(), ids=ids)
    real = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    return G, D, build_method(parts), real, cond


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_steps_give_the_fp32_losses_and_gradients_within_tolerance(dtype):
    """trainer.precision bf16/fp16: the D and G steps' losses within 2% of fp32 and their weight gradients pointing
    the same way (cosine > 0.99 over each network), from identical weights, noise and LabelMix masks; fp16 with
    loss scaling, as the trainer runs it (unscaled, the generator's gradients underflow: cosine 0.47)."""
    G, D, method, real, cond = _tiny_parts_and_batch()
    results = {}
    for precision in (None, dtype):
        g, d = copy.deepcopy(G), copy.deepcopy(D)
        grads = {}
        for side, losses_fn, net in (("D", method.d_losses, d), ("G", method.g_losses, g)):
            torch.manual_seed(3)
            with torch.autocast("cpu", dtype=precision or torch.float32, enabled=precision is not None):
                losses = losses_fn(g, d, real, cond)
            scale = 2.0 ** 16 if precision == torch.float16 else 1.0  # as the trainer's GradScaler for fp16
            (sum(losses.values()).float() * scale).backward()
            flat = torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]) / scale
            grads[side] = ({k: v.item() for k, v in losses.items()}, flat)
            g.zero_grad(set_to_none=True), d.zero_grad(set_to_none=True)
        results[precision] = grads
    for side in ("D", "G"):
        (l32, g32), (llow, glow) = results[None][side], results[dtype][side]
        assert l32.keys() == llow.keys()
        for k in l32:
            assert llow[k] == pytest.approx(l32[k], rel=2e-2, abs=1e-3), (side, k)
        assert g32.abs().max() > 0
        cos = F.cosine_similarity(g32, glow, dim=0).item()
        assert cos > 0.99, f"{side}: gradient cosine {cos:.4f} between fp32 and {dtype}"


def test_foreach_ema_is_the_official_blend():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ema = EMA(net, decay=0.9, warmup=False)
    ref = copy.deepcopy(ema.module.state_dict())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    net.train()(torch.randn(2, 3, 5, 5))  # BN buffers move, num_batches_tracked counts
    ema.update(net)
    src = net.state_dict()
    for k, v in ema.module.state_dict().items():
        if v.dtype.is_floating_point:
            assert torch.allclose(v, 0.9 * ref[k] + 0.1 * src[k], rtol=1e-6, atol=1e-7), k
        else:
            assert torch.equal(v, src[k]), k


def test_frozen_d_gives_g_the_same_gradients():
    from gensynth.build import build_discriminator, build_generator, build_method, resolve_parts
    from gensynth.interfaces import Condition, one_hot

    cfg, _ = resolve(tiny_overrides("unused", "unused"))
    parts = resolve_parts(cfg)
    torch.manual_seed(0)
    G, D, method = build_generator(parts), build_discriminator(parts), build_method(parts)
    n = parts.num_classes
    cond = Condition(one_hot(torch.randint(0, n, (2, 32, 32)), n))
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    grads = []
    for freeze in (False, True):
        G.zero_grad(set_to_none=True), D.zero_grad(set_to_none=True)
        D.requires_grad_(not freeze)
        torch.manual_seed(1)
        g_state, d_state = copy.deepcopy(G.state_dict()), copy.deepcopy(D.state_dict())
        sum(method.g_losses(G, D, real, cond).values()).backward()
        grads.append({k: p.grad.clone() for k, p in G.named_parameters()})
        assert all(p.grad is None for p in D.parameters()) == freeze
        G.load_state_dict(g_state), D.load_state_dict(d_state)  # undo the power-iteration/BN buffer updates
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], rtol=1e-5, atol=1e-8), k


def test_per_device_defaults_and_explicit_choices():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_optim_impl("auto", cpu) == "fused" and resolve_optim_impl("auto", cuda) == "fused"
    assert resolve_optim_impl("foreach", cpu) == "foreach"
    assert resolve_channels_last("auto", cpu) == "by_shape" and resolve_channels_last("auto", cuda) == "nhwc"
    assert resolve_channels_last(True, cpu) == "nhwc"
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert make_adam(p, 1e-4, (0.0, 0.999), "auto", cpu).defaults["fused"] is True
    loop = make_adam(p, 1e-4, (0.0, 0.999), "for-loop", cpu).defaults
    assert not loop["fused"] and loop["foreach"] is False


def test_tf32_is_set_explicitly_for_cuda_only():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        set_tf32(torch.device("cpu"), False)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        set_tf32(torch.device("cuda"), False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        set_tf32(torch.device("cuda"), True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


def test_label_pyramid_equals_resizing_the_full_map():
    from gensynth_oasis.generator import label_pyramid

    seg = torch.randn(2, 5, 32, 64)
    levels = label_pyramid(seg, 5)
    assert [tuple(x.shape[-2:]) for x in levels] == [(2, 4), (4, 8), (8, 16), (16, 32), (32, 64)]
    for x in levels:
        assert torch.equal(x, F.interpolate(seg, size=x.shape[-2:], mode="nearest"))


def test_compiled_discriminator_called_three_times_matches_eager():
    """torch.compile (dynamo + AOT autograd, the capture and buffer functionalisation inductor builds on) of the
    OASIS D called on fake, real and mixed images before one backward, as the D step does: the spectral-norm
    buffers change between the calls and their backward."""
    from gensynth.build import build_discriminator, resolve_parts
    from gensynth.interfaces import Condition, one_hot

    parts = resolve_parts(resolve(tiny_overrides("unused", "unused"))[0])
    torch.manual_seed(0)
    eager = build_discriminator(parts)
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, backend="aot_eager")
    n = parts.num_classes
    cond = Condition(one_hot(torch.randint(0, n, (2, 32, 32)), n))
    xs = [torch.rand(2, 3, 32, 32) * 2 - 1 for _ in range(3)]
    for net in (eager, compiled):
        sum(net(x, cond).logits.square().mean() for x in xs).backward()
    for (k, a), b in zip(eager.named_parameters(), twin.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7), k
    for k, v in eager.state_dict().items():
        assert torch.allclose(v, twin.state_dict()[k], rtol=1e-5, atol=1e-7), k


@pytest.mark.timeout(1800)
@pytest.mark.skipif(os.environ.get("GENSYNTH_SLOW_TESTS") != "1",
                    reason="inductor compiles C++ for several minutes on 2 cores; run with GENSYNTH_SLOW_TESTS=1")
def test_compiled_training_equals_eager(for_loop_run, tiny_cache, tmp_path, monkeypatch):
    """trainer.compile (inductor) for three steps against the eager run. Inductor draws random numbers (the OASIS
    generator's noise) with its own generator unless ``fallback_random``: equally random, but not eager's stream."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fallback_random", True)
    other = _train(tmp_path, tiny_cache, "compiled", **{"optim.implementation": "for-loop",
                                                        "trainer.channels_last": False, "trainer.compile": True})
    _assert_same_training(for_loop_run, other, atol=1e-5)


def test_kept_weight_gradient_memory_trains_bit_identically(tiny_cache, tmp_path, monkeypatch):
    """The matrix-product layers' weight gradients written into kept memory (gensynth.nn.grad_buffer) train exactly
    what fresh memory trains, through the trainer's zero_grad / step / EMA cycle, with and without gradients
    accumulated over two micro-batches (then the memory is still held and fresh memory is used)."""
    from gensynth.nn import gemm_conv, grad_buffer
    from gensynth.nn.conv import Conv2d
    from gensynth.nn.spectral import SpectralConv2d

    # the tiny model's weights are small for its maps: a very low bar puts its layers on the matrix-product path
    monkeypatch.setattr(gemm_conv, "GEMM_WEIGHT_PER_OUTPUT", 0.01)
    served, buffers = [], set()
    take = grad_buffer.GradientBuffer.take

    def counting(self, like):
        out = take(self, like)
        served.append(out is not None)
        buffers.add(self)
        return out

    monkeypatch.setattr(grad_buffer.GradientBuffer, "take", counting)
    for accum in (1, 2):
        options = {"trainer.channels_last": "by_shape", "trainer.micro_batch_size": 4 // accum}
        served.clear()
        kept = _train(tmp_path, tiny_cache, f"kept{accum}", **options)
        assert sum(served) >= 10, f"accum {accum}: kept memory served {sum(served)} of {len(served)} gradients"
        if accum == 2:  # the second micro-batch finds the first one's gradient in the memory
            assert not all(served)
        assert buffers and all(b.nbytes == 0 for b in buffers)  # released when training ended
        for cls in (Conv2d, SpectralConv2d):
            monkeypatch.setattr(cls, "recycle_weight_grad", False)
        served.clear()
        fresh = _train(tmp_path, tiny_cache, f"fresh{accum}", **options)
        assert not served
        for cls in (Conv2d, SpectralConv2d):
            monkeypatch.setattr(cls, "recycle_weight_grad", True)
        for part in kept:
            for k, a in kept[part].items():
                assert torch.equal(a, fresh[part][k]), f"accum {accum}: {part}.{k}"
