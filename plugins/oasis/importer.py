"""Import the official OASIS release checkpoints (boschresearch/OASIS) into gensynth checkpoints.

An official release folder holds ``models/{best,latest,<iter>}_{G,D,EMA}.pth``: plain ``state_dict()`` files
saved with ``torch.save``. They are read with ``torch.load(weights_only=True, map_location="cpu")`` (no code is
unpickled). gensynth's OASIS modules carry the official names (``fc``, ``body.{i}.conv_0.weight_orig``,
``body_down.{i}.conv1.0`` ...) and the old spectral-norm hook layout (``weight_orig``/``weight_u``/``weight_v``),
and the generator input keeps the official order (64 noise channels first, then the labels), so the key mapping is
the identity, plus the torch parametrization naming (``parametrizations.weight.original``/``.0._u``/``.0._v``)
mapped back to the hook naming. Every key and shape is validated; problems raise CheckpointError naming the file
and the key.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import torch
from torch import Tensor

from gensynth.errors import CheckpointError

ROLES = {"generator": "G", "generator_ema": "EMA", "discriminator": "D"}
_PARAM_RENAMES = (
    (re.compile(r"\.parametrizations\.weight\.original$"), ".weight_orig"),
    (re.compile(r"\.parametrizations\.weight\.0\._u$"), ".weight_u"),
    (re.compile(r"\.parametrizations\.weight\.0\._v$"), ".weight_v"),
)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class OfficialRelease:
    """The files of one official checkpoint: role ("generator", "generator_ema", "discriminator") -> path."""

    root: Path
    which: str
    files: dict[str, Path]
    step: int | None = None


# ---------------------------------------------------------------------------------------------
# finding and reading files
# ---------------------------------------------------------------------------------------------
def find_official_files(path: str | Path, which: str | None = None) -> OfficialRelease:
    """Locate ``{which}_{G,D,EMA}.pth`` under PATH (a release folder with ``models/``, or the models folder).

    which: "best", "latest" or an iteration number; default: best, else latest, else the highest iteration.
    """
    root = Path(path)
    if not root.exists():
        raise CheckpointError(f"official OASIS checkpoint folder {str(root)!r} does not exist")
    models = root / "models" if (root / "models").is_dir() else root
    found: dict[str, dict[str, Path]] = {}
    for f in models.glob("*_*.pth"):
        m = re.fullmatch(r"(.+)_(G|D|EMA)\.pth", f.name)
        if m:
            found.setdefault(m.group(1), {})[m.group(2)] = f
    usable = {k: v for k, v in found.items() if "G" in v or "EMA" in v}
    if not usable:
        raise CheckpointError(f"no official OASIS generator found in {str(models)!r}: expected files named "
                              f"best_G.pth / best_EMA.pth, latest_*.pth or <iter>_*.pth")
    if which is None:
        iters = sorted((k for k in usable if k.isdigit()), key=int)
        which = "best" if "best" in usable else "latest" if "latest" in usable else iters[-1] if iters else sorted(usable)[0]
    if str(which) not in usable:
        raise CheckpointError(f"{str(models)!r} has no {which}_G.pth or {which}_EMA.pth; available: "
                              f"{', '.join(sorted(usable))}")
    which = str(which)
    files = {role: usable[which][tag] for role, tag in ROLES.items() if tag in usable[which]}
    step = int(which) if which.isdigit() else None
    iter_file = models / f"{which}_iter.txt"
    if step is None and iter_file.is_file():
        try:
            step = int(iter_file.read_text().strip().split()[0])
        except (ValueError, IndexError):
            step = None
    return OfficialRelease(root=root, which=which, files=files, step=step)


def read_official_state(file: str | Path) -> dict[str, Tensor]:
    """torch.load(weights_only=True) of one official file -> flat dict of tensors with gensynth key names."""
    file = Path(file)
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"official checkpoint file {str(file)!r} does not exist") from None
    except Exception as exc:  # unpickling / zip errors come in many types
        raise CheckpointError(f"cannot read {str(file)!r} as a weights-only torch file: {exc}") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{str(file)!r} holds a {type(obj).__name__}, expected a state dict")
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{str(file)!r}: entry {key!r} is a {type(value).__name__}, not a tensor")
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        for pattern, repl in _PARAM_RENAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def validate_state(state: dict[str, Tensor], module: torch.nn.Module, file: str | Path) -> dict[str, Tensor]:
    """Check keys and shapes against ``module``; returns the state cast to the module's dtypes.

    Raises CheckpointError naming the file and the first missing/unexpected/mismatched keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    problems = []
    if missing:
        problems.append(f"missing key(s) {', '.join(missing[:5])}" + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
    if unexpected:
        problems.append(f"unexpected key(s) {', '.join(unexpected[:5])}" + (f" (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else ""))
    for k in wrong[:5]:
        problems.append(f"key {k} has shape {tuple(state[k].shape)}, expected {tuple(own[k].shape)}")
    if problems:
        raise CheckpointError(f"{str(file)!r} does not fit the OASIS {type(module).__name__}: " + "; ".join(problems))
    return {k: state[k].to(own[k].dtype) for k in own}


# ---------------------------------------------------------------------------------------------
# architecture from the weights
# ---------------------------------------------------------------------------------------------
def generator_options_from_state(state: dict[str, Tensor], num_classes: int, file: str | Path) -> dict[str, Any]:
    """Infer the ``oasis`` generator options (widths, depth, noise, SPADE kernel) from an official G state."""
    if "fc.weight" not in state:
        raise CheckpointError(f"{str(file)!r} is not an OASIS generator state: it has no key fc.weight")
    out_ch, in_ch = state["fc.weight"].shape[:2]
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"body\.(\d+)\.", k))})
    if not blocks:
        raise CheckpointError(f"{str(file)!r}: no body.<i> residual blocks found")
    z_dim = int(in_ch) - num_classes
    if z_dim < 0:
        raise CheckpointError(f"{str(file)!r}: fc.weight takes {in_ch} input channels, fewer than the dataset's "
                              f"{num_classes} classes: wrong --data?")
    if out_ch % 16:
        raise CheckpointError(f"{str(file)!r}: fc.weight has {out_ch} output channels, not 16 x channels_G")
    shared = state.get("body.0.norm_0.mlp_shared.0.weight")
    opts: dict[str, Any] = {"channels": int(out_ch) // 16, "num_res_blocks": len(blocks),
                            "use_3d_noise": z_dim > 0, "norm": "syncbatch",
                            "spectral": "body.0.conv_0.weight_orig" in state}
    if z_dim > 0:
        opts["z_dim"] = z_dim
    if shared is not None:
        opts["spade_hidden"] = int(shared.shape[0])
        opts["spade_ks"] = int(shared.shape[-1])
    return opts


def discriminator_options_from_state(state: dict[str, Tensor], num_classes: int, file: str | Path) -> dict[str, Any]:
    """Infer ``oasis-unet`` options (depth, widths) from an official D state."""
    if "layer_up_last.weight" not in state:
        raise CheckpointError(f"{str(file)!r} is not an OASIS discriminator state: it has no key layer_up_last.weight")
    out = int(state["layer_up_last.weight"].shape[0])
    if out != num_classes + 1:
        raise CheckpointError(f"{str(file)!r}: layer_up_last outputs {out} channels, but the dataset has "
                              f"{num_classes} classes (expected {num_classes + 1}): wrong --data?")
    n = len({int(m.group(1)) for k in state if (m := re.match(r"body_down\.(\d+)\.", k))})
    chans = [3]
    for i in range(n):
        w = state.get(f"body_down.{i}.conv2.1.weight_orig", state.get(f"body_down.{i}.conv2.1.weight"))
        if w is None:
            raise CheckpointError(f"{str(file)!r}: missing key body_down.{i}.conv2.1.weight_orig")
        chans.append(int(w.shape[0]))
    return {"num_res_blocks": n, "channels": chans, "width": 1.0,
            "last_channels": int(state["layer_up_last.weight"].shape[1]),
            "spectral": "body_down.0.conv1.0.weight_orig" in state}


# ---------------------------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------------------------
def _resolve_config(dataset: str, g_opts: dict[str, Any], d_opts: dict[str, Any] | None):
    from gensynth.config import resolve

    cli: dict[str, Any] = {"model.preset": "oasis", "data.name": dataset}
    cli.update({f"model.generator_options.{k}": v for k, v in g_opts.items()})
    cli.update({f"model.discriminator_options.{k}": v for k, v in (d_opts or {}).items()})
    return resolve(cli)


def _num_classes(dataset: str) -> int:
    from gensynth.plugins import get_host

    return get_host().registry("datasets").get(dataset).num_classes


def convert_official(path: str | Path, dataset: str, *, which: str | None = None
                     ) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any], OfficialRelease]:
    """Read, map and validate an official release. Returns (models for save_checkpoint, meta, release)."""
    from gensynth.build import build_discriminator, build_generator, resolve_parts

    release = find_official_files(path, which)
    n = _num_classes(dataset)
    states = {role: read_official_state(f) for role, f in release.files.items()}
    g_role = "generator_ema" if "generator_ema" in states else "generator"
    g_opts = generator_options_from_state(states[g_role], n, release.files[g_role])
    d_opts = (discriminator_options_from_state(states["discriminator"], n, release.files["discriminator"])
              if "discriminator" in states else None)
    cfg, provenance = _resolve_config(dataset, g_opts, d_opts)
    parts = resolve_parts(cfg)
    with torch.device("meta"):
        g = build_generator(parts)
        d = build_discriminator(parts) if d_opts is not None else None
    models: dict[str, dict[str, Tensor]] = {}
    for role, state in states.items():
        module = d if role == "discriminator" else g
        models[role] = {k: v.to("cpu") for k, v in validate_state(state, module, release.files[role]).items()}
    if "generator" not in models:  # an EMA-only release: the EMA weights are the generator
        models["generator"] = models["generator_ema"]
    meta = {"config": cfg.model_dump(mode="json"), "step": int(release.step or 0),
            "provenance": provenance,
            "imported_from": {"source": "boschresearch/OASIS", "path": str(Path(path).resolve()),
                              "which": release.which,
                              "files": {role: f.name for role, f in release.files.items()}}}
    return models, meta, release


def import_official(path: str | Path, dataset: str, out: str | Path, *, which: str | None = None) -> Path:
    """Convert an official OASIS release folder into a gensynth checkpoint directory ``out``."""
    from gensynth.checkpoint import save_checkpoint

    models, meta, _ = convert_official(path, dataset, which=which)
    return save_checkpoint(out, models=models, meta=meta)


def export_official(models: dict[str, dict[str, Tensor]], out_dir: str | Path, *, which: str = "best",
                    step: int | None = None) -> Path:
    """Write gensynth OASIS states in the official layout: ``out_dir/models/{which}_{G,EMA,D}.pth``."""
    models_dir = Path(out_dir) / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    for role, tag in ROLES.items():
        state = models.get(role)
        if state is not None:
            torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, models_dir / f"{which}_{tag}.pth")
    if step is not None and not which.isdigit():
        (models_dir / f"{which}_iter.txt").write_text(f"{step}\n")
    return Path(out_dir)


def load_official_generator(path: str | Path, dataset: str, *, ema: bool = True, which: str | None = None,
                            device: str | torch.device = "cpu"):
    """An official OASIS release folder -> the gensynth ``oasis`` generator (eval mode, on ``device``).

    Call it with one-hot labels (B, N, H, W) and explicit noise: ``G(labels, z)`` with z (B, 64)."""
    from gensynth.build import build_generator, resolve_parts

    models, meta, release = convert_official(path, dataset, which=which)
    role = "generator_ema" if ema and "generator_ema" in models else "generator"
    from gensynth.config import RunConfig

    parts = resolve_parts(RunConfig.model_validate(meta["config"]))
    g = build_generator(parts)
    g.load_state_dict(models[role], strict=True)
    return g.to(device).eval()


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def _cli_import(path: Path, dataset: str, which: str | None):
    """The ``oasis`` converter of ``gensynth models import-official``."""
    models, meta, release = convert_official(path, dataset, which=which)
    kept = ", ".join(f"{role} <- {f.name}" for role, f in release.files.items())
    return models, meta, f"imported official oasis ({release.which}, step {meta['step']}) for {dataset}: {kept}"


def add_commands(cli: click.Group) -> None:
    """register_commands hook body: ``gensynth models import-official oasis``."""
    from gensynth.cli.models_cmd import register_official_importer

    register_official_importer(cli, "oasis", _cli_import)
