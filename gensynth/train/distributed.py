"""Process-group set-up and the few collectives the trainer needs.

Single process when not launched by torchrun (no ``RANK``/``WORLD_SIZE`` in the environment); DDP
otherwise: NCCL on CUDA, gloo on CPU. Every helper is a no-op on one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    """rank / world_size / local_rank of this process and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def pick_device(spec: str, local_rank: int) -> torch.device:
    """trainer.device ("auto", "cpu", "cuda", "cuda:1") -> a device; under DDP "auto"/"cuda" use cuda:local_rank."""
    from gensynth.devices import resolve_device

    device = resolve_device(spec, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def setup(device_spec: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun; return this process's DistInfo."""
    if not launched_by_torchrun() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo(device=pick_device(device_spec, 0))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_spec, local)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
        created = True
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device, initialised_here=created)


def teardown(info: DistInfo) -> None:
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In-place sum over ranks (returns ``t``)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_gather_object(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, info: DistInfo, src: int = 0):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def maybe_sync_batchnorm(module: nn.Module, wants: bool, info: DistInfo) -> nn.Module:
    """BatchNorm -> SyncBatchNorm only for multi-GPU CUDA runs of a model that asks for it.

    ``convert_sync_batchnorm`` mutates children in place, so it must be applied to the freshly built
    training module (never to a module shared with the EMA copy). Never an error on CPU/one process.
    """
    if wants and info.enabled and info.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def wrap_ddp(module: nn.Module, info: DistInfo, find_unused: bool = False) -> nn.Module:
    """Its own DDP wrapper (G and D are wrapped separately); the bare module on one process."""
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    device_ids = [info.device.index] if info.device.type == "cuda" else None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # broadcast_buffers deprecation text
        return DDP(module, device_ids=device_ids, broadcast_buffers=False, find_unused_parameters=find_unused)


def _bn_modules(module: nn.Module):
    for name, m in module.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            yield (name + "." if name else ""), m


def bn_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """This process's BatchNorm running statistics of ``module`` by state-dict key (CPU copies)."""
    out = {}
    for prefix, m in _bn_modules(module):
        for b in ("running_mean", "running_var", "num_batches_tracked"):
            t = getattr(m, b, None)
            if t is not None:
                out[prefix + b] = t.detach().to("cpu").clone()
    return out


def averaged_bn_state(module: nn.Module, info: DistInfo) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with BatchNorm running means/variances averaged over ranks, for saving.

    Plain BN under DDP drifts apart per rank's data; the saved weights hold the average, while every rank keeps
    training with its own statistics (saved per rank in the training state), so saving changes nothing."""
    state = dict(module.state_dict())
    if not info.enabled:
        return state
    with torch.no_grad():
        for prefix, m in _bn_modules(module):
            for b in ("running_mean", "running_var"):
                avg = getattr(m, b).detach().clone()
                dist.all_reduce(avg, op=dist.ReduceOp.SUM)
                state[prefix + b] = avg.div_(info.world_size)
    return state
