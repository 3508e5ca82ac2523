"""``gensynth models``: presets, their parts and their sizes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import click

from gensynth.cli.console import table_console
from rich.table import Table


@click.group()
def command():
    """List and describe model presets."""


@command.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_models(as_json: bool):
    """Every registered model preset with its parts."""
    from gensynth.plugins import get_host

    reg = get_host().registry("models")
    rows = []
    for e in reg.entries():
        p = e.obj
        rows.append({"name": e.name, "plugin": e.plugin, "generator": p.generator.name,
                     "discriminator": p.discriminator.name, "objective": p.objective.name,
                     "losses": p.losses, "description": p.description})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="model presets")
    for col in ("name", "plugin", "generator", "discriminator", "objective", "losses", "description"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["plugin"], r["generator"], r["discriminator"], r["objective"],
                      ", ".join(f"{k}={v:g}" for k, v in r["losses"].items()) or "-", r["description"])
    table_console().print(table)


def describe_preset(name: str, data: str, overrides: dict | None = None) -> dict:
    """Parts and full-size parameter counts (built on the meta device: no memory, no time)."""
    import torch

    from gensynth.build import build_discriminator, build_generator, count_parameters, resolve_parts
    from gensynth.config import resolve

    cfg, provenance = resolve({"model.preset": name, "data.name": data, **(overrides or {})})
    parts = resolve_parts(cfg)
    with torch.device("meta"):
        g = build_generator(parts)
        d = build_discriminator(parts)
    info = {
        "preset": name, "dataset": data, "num_classes": parts.num_classes,
        "generator": parts.generator, "generator_options": parts.generator_options,
        "discriminator": parts.discriminator, "discriminator_options": parts.discriminator_options,
        "objective": parts.objective, "losses": parts.losses,
        "generator_parameters": count_parameters(g), "discriminator_parameters": count_parameters(d),
        "optimiser": cfg.optim.model_dump(), "batch_size": cfg.trainer.batch_size,
        "ema_decay": cfg.trainer.ema_decay, "size": cfg.data.size,
    }
    encoder = getattr(g, "encoder", None)  # a VAE style encoder inside the generator (SPADE, CC-FPSE)
    if isinstance(encoder, torch.nn.Module):
        info["style_encoder_parameters"] = count_parameters(encoder)
        info["generator_own_parameters"] = count_parameters(g) - info["style_encoder_parameters"]
    frozen = sum(p.numel() for p in g.parameters() if not p.requires_grad)
    if frozen:  # e.g. CC-FPSE's never-applied BatchNorm layers, kept for checkpoint compatibility
        info["generator_frozen_parameters"] = frozen
    return info


@command.command("describe")
@click.argument("name")
@click.option("--data", "data", default="demo", show_default=True, help="dataset whose full configuration is used")
@click.option("--set", "sets", multiple=True, help="section.key=value overrides")
@click.option("--json", "as_json", is_flag=True)
def describe(name: str, data: str, sets: tuple[str, ...], as_json: bool):
    """The preset's parts and parameter counts at the full configuration for DATASET."""
    from gensynth.config import parse_set

    info = describe_preset(name, data, parse_set(sets))
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    table = Table(title=f"{name} on {data}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for k, v in info.items():
        if k.endswith("_parameters"):
            v = f"{v:,}"
        table.add_row(k, str(v))
    table_console().print(table)


# ---------------------------------------------------------------------------------------------
# gensynth models import-official MODEL PATH: one command, one converter per model, added by plugins
# ---------------------------------------------------------------------------------------------
#: converter(path, dataset, which) -> (models for save_checkpoint, meta, one line saying what was imported)
OfficialImporter = Callable[[Path, str, Optional[str]], tuple[dict, dict, str]]


def _make_import_official() -> click.Command:
    importers: dict[str, OfficialImporter] = {}

    @click.command("import-official")
    @click.argument("model")
    @click.argument("path", type=click.Path(path_type=Path))
    @click.option("--data", "dataset", required=True,
                  help="dataset the checkpoint was trained on (cityscapes, ade20k, coco-stuff)")
    @click.option("--out", "out", required=True, type=click.Path(path_type=Path),
                  help="gensynth checkpoint directory to write")
    @click.option("--which", default=None,
                  help="which checkpoint of the folder (model-specific: best, latest, an iteration or epoch)")
    def import_official(model: str, path: Path, dataset: str, out: Path, which: Optional[str]):
        """Convert an official release checkpoint folder of MODEL into a gensynth checkpoint."""
        from gensynth.checkpoint import save_checkpoint
        from gensynth.errors import ConfigError

        if model not in importers:
            raise ConfigError(f"import-official: unknown model {model!r}; known: {', '.join(sorted(importers))}")
        models, meta, message = importers[model](path, dataset, which)
        written = save_checkpoint(out, models=models, meta=meta)
        click.echo(message)
        click.echo(f"wrote {written}")

    import_official.importers = importers  # type: ignore[attr-defined]
    return import_official


def register_official_importer(cli: click.Group, model: str, importer: OfficialImporter) -> None:
    """Make ``gensynth models import-official MODEL`` run ``importer`` (called from a plugin's
    ``register_commands`` hook; the command is created by the first plugin that registers a converter)."""
    models = cli.commands.get("models")
    if not isinstance(models, click.Group):
        return
    cmd = models.commands.get("import-official")
    if cmd is None or not hasattr(cmd, "importers"):
        cmd = _make_import_official()
        models.add_command(cmd)
    cmd.importers[model] = importer  # type: ignore[attr-defined]
