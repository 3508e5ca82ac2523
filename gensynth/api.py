"""The Python API: build models from presets, load trained ones from checkpoints.

    >>> from gensynth.api import load_model
    >>> m = load_model("runs/oasis-demo")            # latest good checkpoint, EMA generator, eval mode
    >>> out = m.generator(labels)                      # labels: (B, N, H, W) one-hot -> out.image (B, 3, H, W)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gensynth.build import Parts, build_discriminator, build_generator, resolve_parts
from gensynth.checkpoint import Checkpoint, load_checkpoint, strip_prefixes
from gensynth.config import RunConfig, flatten, resolve
from gensynth.errors import CheckpointError, GensynthError
from gensynth.interfaces import Discriminator, Generator


@dataclass
class LoadedModel:
    """A generator ready for inference (eval mode, on ``device``) with everything needed to use it."""

    generator: Generator
    parts: Parts
    config: RunConfig
    checkpoint: Checkpoint | None
    discriminator: Discriminator | None = None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; ConfigError for a device this machine does not have."""
    from gensynth.devices import resolve_device as _resolve

    return _resolve(device)


def load_state_into(module: nn.Module, state: dict[str, torch.Tensor], *, what: str) -> None:
    """Strict ``load_state_dict`` whose failure is a CheckpointError naming ``what`` and the differing keys/shapes."""
    state = strip_prefixes(state)
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        def few(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        problems = []
        if missing:
            problems.append(f"missing keys: {few(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {few(unexpected)}")
        if wrong:
            problems.append("shape mismatches: " + ", ".join(
                f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:5]))
        raise CheckpointError(f"{what} does not fit the model built from its configuration: {'; '.join(problems)}")
    module.load_state_dict(state, strict=True)


def _parts_for(ckpt: Checkpoint, cfg: RunConfig) -> Parts:
    try:
        return resolve_parts(cfg)
    except GensynthError as exc:
        raise CheckpointError(f"checkpoint {ckpt.path} was trained with parts this installation cannot build "
                              f"(model.preset={cfg.model.preset!r}, data.name={cfg.data.name!r}): {exc}") from exc


def load_model(path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu",
               with_discriminator: bool = False) -> LoadedModel:
    """Load a trained generator (and optionally the discriminator) from a checkpoint or run directory.

    ema: use the EMA generator when the checkpoint has one (else the raw generator).
    Raises CheckpointError naming the file for a missing or damaged checkpoint.
    """
    ckpt = load_checkpoint(path)
    cfg = ckpt.config()
    parts = _parts_for(ckpt, cfg)
    device = resolve_device(device)
    name = "generator_ema" if ema and ckpt.has("generator_ema") else "generator"
    generator = build_generator(parts)
    load_state_into(generator, ckpt.state(name), what=f"{ckpt.path / (name + '.safetensors')}")
    generator.to(device).eval()
    discriminator = None
    if with_discriminator:
        d_state = ckpt.state("discriminator")
        if d_state is None:
            raise CheckpointError(f"checkpoint {ckpt.path} holds no discriminator.safetensors")
        discriminator = build_discriminator(parts)
        load_state_into(discriminator, d_state, what=str(ckpt.path / "discriminator.safetensors"))
        discriminator.to(device).eval()
    return LoadedModel(generator=generator, parts=parts, config=cfg, checkpoint=ckpt, discriminator=discriminator)


def overrides_to_dotted(overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"trainer": {"steps": 5}, "model.generator_options.channels": [8]}`` -> dotted config keys."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if "." not in key and isinstance(value, dict):
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out


def build_model(preset: str, data: str, *, device: str | torch.device = "cpu", **overrides: Any
                ) -> tuple[Generator, Discriminator, Parts]:
    """Build a fresh generator and discriminator of a preset for a dataset (train mode, on ``device``).

    overrides: config keys, either dotted (``**{"model.generator_options.channels": [16, 16]}``) or by
    section (``model={"generator_options": {...}}``).
    """
    dotted = {**overrides_to_dotted(overrides), "model.preset": preset, "data.name": data}
    cfg, _ = resolve(dotted)
    parts = resolve_parts(cfg)
    device = resolve_device(device)
    return build_generator(parts).to(device), build_discriminator(parts).to(device), parts
