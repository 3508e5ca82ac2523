"""The optimiser's parameter groups of a model: every trainable parameter once, frozen ones never.

A module may define ``optimizer_param_groups(lr) -> list[dict]`` (torch's ``{"params": [...], "lr": ...}`` form)
to give some of its parameters their own learning rate, e.g. a discriminator fine-tuning a pretrained backbone
at a fraction of ``optim.lr_d``. The groups are checked: they must cover exactly the parameters that require
gradients, each once, so a frozen parameter never gets optimiser state.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from gensynth.errors import ConfigError


def param_groups(module: nn.Module, lr: float) -> list[dict[str, Any]]:
    """``module``'s trainable parameters as optimiser groups at ``lr`` (or as the module's own hook says)."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    hook = getattr(module, "optimizer_param_groups", None)
    if hook is None:
        return [{"params": trainable, "lr": lr}]
    groups = [g for g in hook(lr) if g["params"]]
    seen: set[int] = set()
    for g in groups:
        for p in g["params"]:
            if not p.requires_grad:
                raise ConfigError(f"{type(module).__name__}.optimizer_param_groups: a parameter of shape "
                                  f"{tuple(p.shape)} is frozen (requires_grad=False) but was given to the optimiser")
            if id(p) in seen:
                raise ConfigError(f"{type(module).__name__}.optimizer_param_groups: a parameter of shape "
                                  f"{tuple(p.shape)} appears in two groups")
            seen.add(id(p))
    left = [p for p in trainable if id(p) not in seen]
    if left:
        raise ConfigError(f"{type(module).__name__}.optimizer_param_groups leaves {len(left)} trainable parameters "
                          f"out of every group (e.g. one of shape {tuple(left[0].shape)})")
    return groups
