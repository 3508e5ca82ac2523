"""Trainer building blocks: EMA (warm-up, buffers), BN refresh, LR schedules, precision, sample grids."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from gensynth.train.distributed import DistInfo, maybe_sync_batchnorm, setup, wrap_ddp
from gensynth.train.ema import EMA, has_batchnorm, refresh_bn_stats, state_is_finite
from gensynth.train.precision import autocast, make_scaler
from gensynth.train.samples import colorize, make_grid
from gensynth.train.schedule import lr_factor, make_scheduler
from gensynth.train.state import capture_rng, restore_rng


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x):
        return self.bn(self.lin(x))


def test_ema_warmup_blends_parameters_and_buffers():
    g = _Net()
    ema = EMA(g, decay=0.999, warmup=True)
    assert not any(p.requires_grad for p in ema.module.parameters())
    with torch.no_grad():
        g.lin.weight.add_(1.0)
        g.bn.running_mean.fill_(2.0)
        g.bn.num_batches_tracked.fill_(5)
    before_w = ema.module.lin.weight.clone()
    d0 = ema.current_decay()
    assert d0 == pytest.approx(1 / 10)
    ema.update(g)
    assert torch.allclose(ema.module.lin.weight, d0 * before_w + (1 - d0) * g.lin.weight)
    assert torch.allclose(ema.module.bn.running_mean, torch.full((3,), (1 - d0) * 2.0))
    assert int(ema.module.bn.num_batches_tracked) == 5  # integer buffers are copied
    assert ema.current_decay() == pytest.approx(2 / 11)
    ema.updates = 100000
    assert ema.current_decay() == 0.999
    assert EMA(g, 0.9, warmup=False).current_decay() == 0.9


def test_bn_refresh_reestimates_stats_in_train_mode_then_eval():
    m = _Net()
    m.eval()
    assert has_batchnorm(m) and not has_batchnorm(nn.Linear(2, 2))
    data = [torch.randn(64, 3) * 3 + 5 for _ in range(60)]
    n = refresh_bn_stats(m, iter(data), DistInfo())
    assert n == 60 and not m.training
    with torch.no_grad():
        expected = torch.cat([m.lin(x) for x in data]).mean(0)
    assert torch.allclose(m.bn.running_mean, expected, atol=0.3)
    assert state_is_finite(m)
    with torch.no_grad():
        m.lin.weight[0, 0] = float("nan")
    assert not state_is_finite(m)


def test_linear_decay_schedule():
    assert [lr_factor("constant", s, 10, 0.5) for s in (0, 9)] == [1.0, 1.0]
    assert [lr_factor("linear-decay", s, 10, 0.5) for s in (0, 4, 5, 6, 9, 10)] == [1.0, 1.0, 1.0, 0.8, 0.2, 0.0]
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=0.1, betas=(0.0, 0.999))
    sched = make_scheduler(opt, "linear-decay", 4, 0.5)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.05])


def test_precision_contexts_on_cpu():
    dev = torch.device("cpu")
    with autocast("bf16", dev):
        y = nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16
    with autocast("fp32", dev):
        assert nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32
    assert make_scaler("fp16", dev).is_enabled() and not make_scaler("bf16", dev).is_enabled()


def test_single_process_needs_no_process_group_and_keeps_batchnorm(monkeypatch):
    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    info = setup("cpu")
    assert (info.rank, info.world_size, info.enabled, info.device.type) == (0, 1, False, "cpu")
    net = _Net()
    assert maybe_sync_batchnorm(net, True, info) is net and isinstance(net.bn, nn.BatchNorm1d)
    assert wrap_ddp(net, info) is net
    # a multi-process CPU run never converts to SyncBatchNorm (GPU-only) either
    cpu_ddp = DistInfo(rank=0, world_size=2, device=torch.device("cpu"))
    assert isinstance(maybe_sync_batchnorm(net, True, cpu_ddp).bn, nn.BatchNorm1d)


def test_rng_capture_restore_roundtrip():
    import random

    import numpy as np

    state = capture_rng(torch.device("cpu"))
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng(state, torch.device("cpu"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_sample_grid_layout():
    colors = torch.tensor([[0, 0, 0], [255, 0, 0]], dtype=torch.uint8)
    label = torch.tensor([[[0, 1], [1, 7]]])
    col = colorize(label, colors)
    assert col.shape == (1, 3, 2, 2) and col[0, :, 0, 1].tolist() == [255, 0, 0] and col[0, :, 1, 1].tolist() == [0, 0, 0]
    fake, real = -torch.ones(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    grid = make_grid(label, fake, real, colors, pad=1)
    assert grid.shape == (3, 2, 8)
    assert grid[:, :, 3:5].eq(0).all() and grid[:, :, 6:8].eq(255).all() and grid[:, :, 2].eq(255).all()


def test_progress_bar_on_terminal_plain_lines_otherwise():
    import io

    from rich.console import Console

    from gensynth.train.logging import ProgressDisplay

    values = {"G_adv": 1.25, "D_fake": 0.5, "lr_g": 1e-4, "images_per_s": 12.0}
    plain = io.StringIO()
    p = ProgressDisplay(Console(file=plain, force_terminal=False, width=200), total=100, start=0)
    assert p.bar is None
    p.log(10, values, eta_s=75.0)
    p.close()
    assert plain.getvalue().strip() == "step 10/100 12.0 img/s ETA 1m15s G_adv=1.25 D_fake=0.5"
    tty = io.StringIO()
    p = ProgressDisplay(Console(file=tty, force_terminal=True, width=200), total=100, start=0)
    assert p.bar is not None
    p.log(10, values, eta_s=75.0)
    p.close()
    out = tty.getvalue()
    assert "10/100" in out and "12.0 img/s" in out and "G_adv=1.25" in out
    silent = io.StringIO()
    p = ProgressDisplay(Console(file=silent), total=100, start=0, enabled=False)  # ranks other than 0
    p.log(10, values, eta_s=1.0)
    assert silent.getvalue() == ""
