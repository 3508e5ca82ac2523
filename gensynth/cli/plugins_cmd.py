"""``gensynth plugins``: what is installed and what it registered."""
from __future__ import annotations

import json

import click

from gensynth.cli.console import table_console
from rich.table import Table


@click.group()
def command():
    """Inspect installed plugins."""


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def list_plugins(as_json: bool):
    """Each plugin: name, distribution and version, status (broken: skipped, with why), hooks, names registered."""
    from gensynth.plugins import get_host

    infos = get_host().plugin_infos()
    if as_json:
        click.echo(json.dumps([
            {"name": i.name, "module": i.module, "distribution": i.distribution, "version": i.version,
             "hooks": i.hooks, "registered": i.registered, "status": "broken" if i.broken else "ok",
             "problem": i.broken} for i in infos], indent=2))
        return
    table = Table(title="gensynth plugins")
    for col in ("plugin", "distribution", "status", "hooks", "registered"):
        table.add_column(col, overflow="fold")
    for i in infos:
        reg = "\n".join(f"{kind}: {', '.join(names)}" for kind, names in i.registered.items())
        status = f"[red]broken[/]: {i.broken}" if i.broken else "ok"
        table.add_row(i.name, f"{i.distribution or '-'} {i.version or ''}".strip(), status, "\n".join(i.hooks),
                      reg or "-")
    table_console().print(table)
