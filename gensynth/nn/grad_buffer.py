"""Weight gradients written into memory kept from the previous backward, instead of fresh memory every iteration.

A training iteration frees every weight gradient (``zero_grad(set_to_none=True)``) and allocates it again in the
next backward. On the CPU a fresh allocation of a few MB and more comes straight from the operating system, and the
kernel then faults in and zeroes each 4 KB page on first touch: writing a fresh 1024x1024x3x3 fp32 gradient (38 MB,
9217 page faults) took 19-23 ms on a 2-core AMX Xeon, writing the same product into kept memory 3-6 ms
(benchmarks/gradient_kernels.py; benchmarks/README.md, "Weight gradients in kept memory"). :class:`GradientBuffer`
keeps that memory between iterations for the layers whose weight-gradient product gensynth computes itself
(:mod:`gensynth.nn.gemm_conv`).

Safety: the memory is only written when no tensor outside the buffer still uses it -- after the optimizer step and
``zero_grad(set_to_none=True)``, when ``param.grad`` no longer exists. While anything else holds it (gradients
accumulated over several backwards, a gradient the user kept, ``zero_grad(set_to_none=False)``), :meth:`take`
returns None and the caller allocates fresh memory, as without the buffer. Values never change, only where they
are written.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _storage_users(t: Tensor) -> int:
    """How many tensors (and Python storage objects) hold ``t``'s memory."""
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


class GradientBuffer:
    """One layer's weight-gradient memory, kept across backward passes (not part of the state dict; a copy or an
    unpickled module starts empty)."""

    def __init__(self) -> None:
        self._memory: Tensor | None = None
        self._alone = 0  # _storage_users of _memory when nothing else holds it

    def take(self, like: Tensor) -> Tensor | None:
        """A contiguous tensor of ``like``'s shape, dtype and device to write the next gradient of the parameter
        ``like`` into, or None when the kept memory is still in use elsewhere (then allocate fresh memory). The
        returned tensor is a new view: autograd can hand it on as ``param.grad`` without a copy."""
        memory = self._memory
        if (memory is None or memory.shape != like.shape or memory.dtype != like.dtype
                or memory.device != like.device):
            memory = self._memory = torch.empty(like.shape, dtype=like.dtype, device=like.device)
            self._alone = _storage_users(memory)
        elif _storage_users(memory) != self._alone:
            return None
        grad = like.grad if like.is_leaf else None
        if grad is not None and grad.untyped_storage().data_ptr() == memory.data_ptr():
            return None  # a second guard for the common case: param.grad still holds it
        return memory.view(like.shape)

    def release(self) -> None:
        """Drop the kept memory (it is freed once no gradient uses it)."""
        self._memory = None

    @property
    def nbytes(self) -> int:
        return 0 if self._memory is None else self._memory.nbytes

    def __deepcopy__(self, memo) -> "GradientBuffer":
        return GradientBuffer()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def __repr__(self) -> str:
        return f"GradientBuffer({self.nbytes} bytes)"


def layer_gradient_buffer(layer: torch.nn.Module) -> GradientBuffer | None:
    """``layer``'s :class:`GradientBuffer` for its weight (created on first use), or None when recycling does not
    apply: the layer's ``recycle_weight_grad`` is False, no gradient is being recorded, or under torch.compile."""
    if not getattr(layer, "recycle_weight_grad", False) or not torch.is_grad_enabled():
        return None
    if torch.compiler.is_compiling():
        return None
    buffer = layer.__dict__.get("_weight_grad_buffer")
    if buffer is None:
        buffer = layer.__dict__["_weight_grad_buffer"] = GradientBuffer()
    return buffer


def release_gradient_buffers(module: torch.nn.Module) -> int:
    """Drop the kept weight-gradient memory of every layer of ``module`` (the trainer does so when training ends);
    returns the bytes released. The next backward allocates again."""
    released = 0
    for layer in module.modules():
        buffer = layer.__dict__.get("_weight_grad_buffer")
        if buffer is not None:
            released += buffer.nbytes
            buffer.release()
    return released
