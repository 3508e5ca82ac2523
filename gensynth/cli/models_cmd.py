"""``gensynth models``: presets, their parts and their sizes."""
from __future__ import annotations

import json

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
    return {
        "preset": name, "dataset": data, "num_classes": parts.num_classes,
        "generator": parts.generator, "generator_options": parts.generator_options,
        "discriminator": parts.discriminator, "discriminator_options": parts.discriminator_options,
        "objective": parts.objective, "losses": parts.losses,
        "generator_parameters": count_parameters(g), "discriminator_parameters": count_parameters(d),
        "optimiser": cfg.optim.model_dump(), "batch_size": cfg.trainer.batch_size,
        "ema_decay": cfg.trainer.ema_decay, "size": cfg.data.size,
    }


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
