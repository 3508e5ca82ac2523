"""The ``gensynth`` command line (click + rich)."""
from __future__ import annotations

import errno
import importlib
import os
import sys

from gensynth.runtime import prefer_huge_pages

prefer_huge_pages()  # before anything imports torch: PyTorch reads it at its first allocation

import click  # noqa: E402
from rich.console import Console  # noqa: E402

from gensynth import __version__  # noqa: E402
from gensynth.errors import GensynthError  # noqa: E402

# command modules of the core, each defining ``command`` (a click command or group)
CORE_COMMANDS = ["train", "generate", "paint", "evaluate", "segment", "segmenter", "datasets", "models", "plugins",
                 "compare"]


# the file system's refusals (disk full, read-only, quota, permissions): one line naming the path, not a traceback
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM}


class GensynthGroup(click.Group):
    """Turns gensynth's own errors into one red line (no traceback) and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except GensynthError as exc:
            if os.environ.get("GENSYNTH_TRACEBACK"):
                raise
            Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
            ctx.exit(2)
        except OSError as exc:
            if exc.errno not in _ENVIRONMENT_ERRNOS:
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            Console(stderr=True).print(f"[bold red]error:[/] {where}{exc.strerror}", highlight=False, markup=True,
                                       soft_wrap=True)
            ctx.exit(2)


@click.group(cls=GensynthGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="gensynth")
def cli():
    """gensynth: semantic image synthesis (label map -> photo) with OASIS, SPADE+ and plugins.

    \b
    Quick start (built-in demo data, CPU is fine):
      gensynth train --model oasis --data demo --steps 300
      gensynth generate --checkpoint runs/oasis-demo --labels LABEL.png --out out/ --samples 4
    """


def _add_core_commands(group: click.Group) -> None:
    for name in CORE_COMMANDS:
        try:
            module = importlib.import_module(f"gensynth.cli.{name}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name == f"gensynth.cli.{name}_cmd":
                continue
            raise
        group.add_command(module.command, name=name)


_add_core_commands(cli)
_plugin_commands_added = False


def _add_plugin_commands() -> None:
    global _plugin_commands_added
    if _plugin_commands_added:
        return
    _plugin_commands_added = True
    from gensynth.plugins import get_host

    get_host().add_commands(cli)


def _show_gensynth_warnings_as_one_line() -> None:
    """gensynth's own warnings (a skipped plugin, a damaged checkpoint passed over) are one yellow line on stderr,
    not Python's two lines with the source."""
    import warnings

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.split(".")[0].startswith("gensynth"):
            Console(stderr=True).print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def _quiet_storage_loggers() -> None:
    """gcsfs and s3fs log a full traceback for each request they give up on; gensynth reports the failure itself
    in one line naming the URL, so those logs are only kept for real errors of the libraries' own."""
    import logging

    for name in ("gcsfs", "s3fs", "aiobotocore", "google.auth"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> None:
    _show_gensynth_warnings_as_one_line()
    _quiet_storage_loggers()
    try:
        _add_plugin_commands()
    except GensynthError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    cli.main(args=argv, prog_name="gensynth")
