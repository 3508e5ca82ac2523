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


_STATUS_STYLE = {"ok": "green", "FAIL": "bold red", "skip": "yellow"}


@command.command("check")
@click.argument("name", required=False)
@click.option("--data-root", default=None, help="a directory in the dataset's layout, for the datasets' sample check")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def check_plugins(name: str | None, data_root: str | None, as_json: bool):
    """Build every part plugin NAME registers (all plugins without NAME) at a tiny size, run it on a generated
    batch and check its contracts, a backward pass and a dataset's first samples. Exit code 1 when a check fails."""
    from gensynth.testing import check_plugin

    results = check_plugin(name, data_root=data_root)
    failed = [r for r in results if r.failed]
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        table = Table(title=f"gensynth plugins check{' ' + name if name else ''}")
        for col in ("plugin", "part", "check", "result"):
            table.add_column(col, overflow="fold")
        for r in results:
            style = _STATUS_STYLE.get(r.status, "")
            table.add_row(r.plugin, f"{r.kind} {r.name}", r.check, f"[{style}]{r.status}[/] {r.detail}")
        console = table_console()
        console.print(table)
        skipped = sum(r.status == "skip" for r in results)
        console.print(f"{len(results) - len(failed) - skipped} passed, {len(failed)} failed, {skipped} skipped")
    if failed:
        raise SystemExit(1)
