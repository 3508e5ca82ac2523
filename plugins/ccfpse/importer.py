"""Import official CC-FPSE checkpoints (xh-liu/CC-FPSE) into gensynth checkpoints.

The official code saves SPADE-style files ``<epoch>_net_G.pth``, ``<epoch>_net_D.pth`` and ``<epoch>_net_E.pth``
(the released folders ``coco_best``, ``ade_best``, ``cs_best``): plain state dicts, read here with
``torch.load(weights_only=True)`` so no code is unpickled. gensynth's ``cc-fpse`` and ``fpse`` modules carry the
official names and the old spectral-norm layout (``weight_orig``/``weight_u``/``weight_v``), so the mapping is the
identity except for:

* the shortcut SPADE's parameter-free norm: ``<block>.norm_s.param_free_norm.*`` -> ``<block>.norm_s.first_norm.*``
  (gensynth's core SPADE layer);
* the VAE encoder, a separate file in the official release, nested in gensynth's generator:
  ``layer<k>.0.*`` -> ``encoder.layers.<k-1>.0.*``, ``fc_mu/fc_var`` -> ``encoder.fc_mu/fc_var``;
* wrapper prefixes (``module.`` of DDP) and torch's parametrization names, which are undone.

Every key and shape is checked; problems raise CheckpointError naming the file and the keys.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gensynth.errors import CheckpointError

ROLES = {"G": "generator", "D": "discriminator", "E": "encoder"}
_PARAM_RENAMES = (
    (re.compile(r"\.parametrizations\.weight\.original$"), ".weight_orig"),
    (re.compile(r"\.parametrizations\.weight\.0\._u$"), ".weight_u"),
    (re.compile(r"\.parametrizations\.weight\.0\._v$"), ".weight_v"),
)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_G_RENAMES = ((re.compile(r"\.norm_s\.param_free_norm\."), ".norm_s.first_norm."),)
_E_RENAMES = ((re.compile(r"^layer(\d+)\."), lambda m: f"encoder.layers.{int(m.group(1)) - 1}."),
              (re.compile(r"^(fc_mu|fc_var)\."), r"encoder.\1."))


@dataclass
class OfficialRelease:
    """The files of one official checkpoint: tag ("G", "D", "E") -> path; ``which`` is the epoch label."""

    root: Path
    which: str
    files: dict[str, Path]


def find_official_files(path: str | Path, which: str | None = None) -> OfficialRelease:
    """``{which}_net_{G,D,E}.pth`` under PATH; which: "latest", "best" or an epoch (default: latest, else best,
    else the highest epoch)."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"official CC-FPSE checkpoint folder {str(root)!r} does not exist")
    found: dict[str, dict[str, Path]] = {}
    for f in root.glob("*_net_*.pth"):
        m = re.fullmatch(r"(.+)_net_(G|D|E)\.pth", f.name)
        if m:
            found.setdefault(m.group(1), {})[m.group(2)] = f
    usable = {k: v for k, v in found.items() if "G" in v}
    if not usable:
        raise CheckpointError(f"no official CC-FPSE generator in {str(root)!r}: expected a file named "
                              f"<epoch>_net_G.pth (e.g. latest_net_G.pth, 200_net_G.pth)")
    if which is None:
        epochs = sorted((k for k in usable if k.isdigit()), key=int)
        which = "latest" if "latest" in usable else "best" if "best" in usable else epochs[-1] if epochs else sorted(usable)[0]
    if str(which) not in usable:
        raise CheckpointError(f"{str(root)!r} has no {which}_net_G.pth; available: {', '.join(sorted(usable))}")
    return OfficialRelease(root, str(which), dict(usable[str(which)]))


def read_state(file: Path) -> dict[str, Tensor]:
    """torch.load(weights_only=True) of one official file -> flat dict, wrapper prefixes and parametrization names
    undone."""
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling / zip errors come in many types
        raise CheckpointError(f"cannot read {str(file)!r} as a weights-only torch file: {exc}") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
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


def _rename(state: dict[str, Tensor], rules) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def map_generator(g_state: dict[str, Tensor], e_state: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """Official G (and E) state -> the gensynth ``cc-fpse`` generator's keys."""
    state = _rename(g_state, _G_RENAMES)
    if e_state is not None:
        state.update(_rename(e_state, _E_RENAMES))
    return state


def validate_state(state: dict[str, Tensor], module: torch.nn.Module, file: str) -> dict[str, Tensor]:
    """Check keys and shapes against ``module``; returns the state cast to the module's dtypes."""
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
        raise CheckpointError(f"{file} does not fit the CC-FPSE {type(module).__name__}: " + "; ".join(problems))
    return {k: state[k].to(own[k].dtype) for k in own}


def generator_options_from_state(state: dict[str, Tensor], num_classes: int, file: str) -> dict[str, Any]:
    """Infer the ``cc-fpse`` options (width, mode, VAE, edges, predictor width) from an official G state."""
    first = state.get("labelenc1.0.0.weight_orig", state.get("labelenc1.0.0.weight"))
    if first is None or "fc.weight" not in state:
        raise CheckpointError(f"{file} is not a CC-FPSE generator state: it has no labelenc1.0.0.weight_orig / "
                              f"fc.weight")
    semantic_nc = int(first.shape[1])
    edges = semantic_nc - num_classes
    if edges not in (0, 1):
        raise CheckpointError(f"{file}: the generator takes {semantic_nc} label channels, but the dataset has "
                              f"{num_classes} classes (expected {num_classes} or {num_classes + 1} with instance "
                              f"edges): wrong --data?")
    hidden = state.get("head_0.gen_weights1.0.weight")
    return {"ngf": int(first.shape[0]), "use_instance_edges": bool(edges),
            "num_upsampling_layers": "more" if any(k.startswith("labelenc7.") for k in state) else "normal",
            "use_vae": state["fc.weight"].dim() == 2,
            "hidden": int(hidden.shape[0]) if hidden is not None else 128,
            "spectral": "labelenc1.0.0.weight_orig" in state,
            "unused_bn": "head_0.norm_0.weight" in state}


def discriminator_options_from_state(state: dict[str, Tensor], num_classes: int, file: str) -> dict[str, Any]:
    """Infer the ``fpse`` options (width, edges) from an official D state."""
    first = state.get("enc1.0.0.weight_orig", state.get("enc1.0.0.weight"))
    if first is None or "embedding.weight" not in state:
        raise CheckpointError(f"{file} is not an FPSE discriminator state: it has no enc1.0.0.weight_orig / "
                              f"embedding.weight")
    edges = int(state["embedding.weight"].shape[1]) - num_classes
    if edges not in (0, 1):
        raise CheckpointError(f"{file}: the discriminator embeds {state['embedding.weight'].shape[1]} label "
                              f"channels, but the dataset has {num_classes} classes: wrong --data?")
    return {"ndf": int(first.shape[0]), "use_instance_edges": bool(edges), "spectral": "enc1.0.0.weight_orig" in state}


def convert_official(path: str | Path, dataset: str, *, which: str | None = None
                     ) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any], OfficialRelease]:
    """Read, map and validate an official release. Returns (models for save_checkpoint, meta, release)."""
    from gensynth.build import build_discriminator, build_generator, resolve_parts
    from gensynth.config import resolve
    from gensynth.plugins import get_host

    release = find_official_files(path, which)
    n = get_host().registry("datasets").get(dataset).num_classes
    states = {tag: read_state(f) for tag, f in release.files.items()}
    g_opts = generator_options_from_state(states["G"], n, str(release.files["G"]))
    if g_opts["use_vae"] and "E" not in states:
        raise CheckpointError(f"{str(release.files['G'])!r} is a VAE generator (fc is a Linear layer) but "
                              f"{release.which}_net_E.pth (its encoder) is missing in {str(release.root)!r}")
    cli: dict[str, Any] = {"model.preset": "cc-fpse", "data.name": dataset}
    cli.update({f"model.generator_options.{k}": v for k, v in g_opts.items()})
    if not g_opts["use_vae"]:
        cli["model.losses.kl"] = 0
    if "D" in states:
        d_opts = discriminator_options_from_state(states["D"], n, str(release.files["D"]))
        cli.update({f"model.discriminator_options.{k}": v for k, v in d_opts.items()})
    cfg, provenance = resolve(cli)
    if g_opts["use_vae"]:  # the VAE's Linear head is built for the training size
        cli["model.generator_options.size"] = list(cfg.data.size)
        cfg, provenance = resolve(cli)
    parts = resolve_parts(cfg)
    with torch.device("meta"):
        g = build_generator(parts)
        d = build_discriminator(parts) if "D" in states else None
    g_state = map_generator(states["G"], states.get("E") if g_opts["use_vae"] else None)
    files = f"{release.files['G'].name}" + (f" + {release.files['E'].name}" if g_opts["use_vae"] else "")
    models = {"generator": validate_state(g_state, g, files)}
    if d is not None:
        models["discriminator"] = validate_state(states["D"], d, release.files["D"].name)
    meta = {"config": cfg.model_dump(mode="json"), "step": 0, "provenance": provenance,
            "imported_from": {"source": "xh-liu/CC-FPSE", "path": str(Path(path).resolve()), "which": release.which,
                              "files": {ROLES[t]: f.name for t, f in release.files.items()}}}
    return models, meta, release


def import_official(path: str | Path, dataset: str, out: str | Path, *, which: str | None = None) -> Path:
    """Convert an official CC-FPSE release folder into a gensynth checkpoint directory ``out``."""
    from gensynth.checkpoint import save_checkpoint

    models, meta, _ = convert_official(path, dataset, which=which)
    return save_checkpoint(out, models=models, meta=meta)


def _cli_import(path: Path, dataset: str, which: str | None):
    """The ``cc-fpse`` converter of ``gensynth models import-official``."""
    models, meta, release = convert_official(path, dataset, which=which)
    kept = ", ".join(f"{ROLES[t]} <- {f.name}" for t, f in sorted(release.files.items()))
    return models, meta, f"imported official cc-fpse (epoch {release.which}) for {dataset}: {kept}"


def add_commands(cli) -> None:
    """register_commands hook body: ``gensynth models import-official cc-fpse``."""
    from gensynth.cli.models_cmd import register_official_importer

    register_official_importer(cli, "cc-fpse", _cli_import)
