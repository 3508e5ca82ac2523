"""Exponential moving average of the generator, and the EMA's batch-norm statistics refresh.

As the official OASIS code: after every step, for every state-dict entry (parameters AND buffers,
e.g. spectral-norm u/v and BN running stats) ema <- d * ema + (1 - d) * G, computed as one batched
``torch._foreach_lerp_`` (ema + (1 - d) * (G - ema): the same blend, one kernel launch per dtype/device group
instead of two per tensor). Integer buffers (``num_batches_tracked``) are copied. With warm-up the decay is
min(decay, (1 + t) / (10 + t)).
"""
from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from gensynth.train.distributed import DistInfo, all_reduce_sum


class EMA:
    """Holds the EMA copy of a generator. ``module``: the copy (no gradients)."""

    def __init__(self, generator: nn.Module, decay: float, warmup: bool = True):
        self.module = copy.deepcopy(generator)
        self.module.requires_grad_(False)
        self.decay = float(decay)
        self.warmup = warmup
        self.updates = 0

    def current_decay(self) -> float:
        t = self.updates
        return min(self.decay, (1.0 + t) / (10.0 + t)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, generator: nn.Module) -> None:
        """Blend the bare (unwrapped) generator's state into the EMA copy."""
        d = self.current_decay()
        src = generator.state_dict()
        blend_ema, blend_src = [], []
        for key, ema_t in self.module.state_dict().items():
            g_t = src[key].detach()
            if ema_t.dtype.is_floating_point or ema_t.dtype.is_complex:
                blend_ema.append(ema_t)
                blend_src.append(g_t if g_t.dtype == ema_t.dtype else g_t.to(ema_t.dtype))
            else:
                ema_t.copy_(g_t)
        if blend_ema:
            torch._foreach_lerp_(blend_ema, blend_src, 1.0 - d)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state.get("updates", 0))


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@torch.no_grad()
def refresh_bn_stats(module: nn.Module, conditions: Iterable, info: DistInfo) -> int:
    """Re-estimate BN running statistics of ``module`` in train mode on ``conditions`` (Condition objects).

    Under DDP each rank runs on its own data, then running means/variances are averaged over ranks so
    every rank holds the same EMA. Returns the number of batches used. Leaves the module in eval mode.
    """
    n = 0
    was_training = module.training
    module.train()
    for cond in conditions:
        module(cond)
        n += 1
    if info.enabled:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                for buf in (m.running_mean, m.running_var):
                    all_reduce_sum(buf, info).div_(info.world_size)
    module.train(was_training)
    module.eval()
    return n


@torch.no_grad()
def refreshed_copy(module: nn.Module, conditions: Iterable, info: DistInfo) -> nn.Module:
    """A copy of ``module`` with re-estimated BN statistics (eval mode); ``module`` itself is left untouched.

    The refresh runs forward passes in train mode, which also advance spectral-norm vectors; doing it on a copy
    keeps the EMA's own trajectory independent of when samples, evaluations and saves happen (a run saved on a
    signal at any step resumes exactly as if uninterrupted)."""
    copied = copy.deepcopy(module)
    refresh_bn_stats(copied, conditions, info)
    return copied


def entries_changed_by_refresh(ema_module: nn.Module, refreshed: nn.Module) -> dict[str, torch.Tensor]:
    """The EMA's own (unrefreshed) values of the state entries that differ in its refreshed copy, on the CPU.

    Checkpoints hold the refreshed weights (for inference) plus these entries, so resuming restores the EMA
    exactly as training left it."""
    mine, theirs = ema_module.state_dict(), refreshed.state_dict()
    return {k: v.detach().to("cpu").clone() for k, v in mine.items() if not torch.equal(v, theirs[k])}


@torch.no_grad()
def restore_entries(module: nn.Module, entries: dict[str, torch.Tensor], what: str) -> None:
    """Copy ``entries`` (from :func:`entries_changed_by_refresh`) back into ``module``; CheckpointError naming
    ``what`` when they do not fit."""
    from gensynth.errors import CheckpointError

    own = module.state_dict()
    bad = [k for k, v in entries.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(f"{what}: EMA entries {', '.join(bad[:5])} do not fit the generator")
    for k, v in entries.items():
        own[k].copy_(v)


def state_is_finite(module: nn.Module) -> bool:
    """True when every floating-point parameter and buffer is finite (one host sync)."""
    flags = [torch.isfinite(t).all() for t in module.state_dict().values() if t.dtype.is_floating_point]
    return bool(torch.stack(flags).all()) if flags else True


