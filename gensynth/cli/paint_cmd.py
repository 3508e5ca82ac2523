"""``gensynth paint``: serve a local page to paint label maps and see generated images as you paint."""
from __future__ import annotations

import errno
import itertools
import socket

import click

from gensynth.errors import ConfigError


def _parse_size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None

    parts = value.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"--size must be HxW with positive integers (e.g. 256x512), got {value!r}")
    return int(parts[0]), int(parts[1])


@click.command()
@click.option("--checkpoint", "-c", required=True, help="run directory or checkpoint directory")
@click.option("--labels", "-l", default=None,
              help="label maps to start from: a label PNG (dataset raw ids), a folder of them, or shards")
@click.option("--from-dataset", is_flag=True,
              help="also offer label maps of the run's validation split (its data.root; demo data is generated)")
@click.option("--max-labels", default=32, show_default=True, type=click.IntRange(1),
              help="read at most this many label maps from --labels (and from the dataset)")
@click.option("--size", default=None, help="HxW of a blank canvas (default: the model's training size)")
@click.option("--blank-class", default=None,
              help="class (name or id) of a blank canvas and the eraser (default: the don't-care class)")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on; anything but a loopback address exposes the page to your network")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(0, 65535), help="0 = any free port")
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16: run the generator under bf16 autocast (faster on CPUs with AMX and on GPUs)")
@click.option("--verbose", is_flag=True, help="log every request")
def command(checkpoint, labels, from_dataset, max_labels, size, blank_class, host, port, device, precision, verbose):
    """Paint a label map in your browser and see the model's image follow each stroke.

    \b
    Examples:
      gensynth paint --checkpoint runs/oasis-demo
      gensynth paint -c runs/oasis-demo --from-dataset
      gensynth paint -c runs/oasis-cityscapes --labels val_labels/ --port 0
    """
    from rich.console import Console

    from gensynth.api import resolve_device
    from gensynth.cli.generate_cmd import _label_sets
    from gensynth.paint.server import PaintServer, is_loopback
    from gensynth.paint.session import PaintSession

    console = Console(stderr=True)
    session = PaintSession.from_checkpoint(checkpoint, device=resolve_device(device), size=_parse_size(size),
                                           precision=precision)
    if blank_class is not None:
        session.set_blank_class(blank_class)
    if labels is not None:
        for stem, ids in itertools.islice(_label_sets(session.syn, labels), max_labels):
            grid = ids[0].numpy()
            session.check_ids(grid, stem)
            session.initial.append((stem, grid))
    if from_dataset:
        for key, grid in session.dataset_samples(max_labels):
            session.check_ids(grid, key)
            session.initial.append((key, grid))
    warm_ms = session.warm_up()
    try:
        server = PaintServer(session, host=host, port=port, verbose=verbose)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is in use: choose another with --port, or --port 0 for any "
                              f"free port") from None
        if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
            raise ConfigError(f"cannot listen on --host {host!r}: {exc.strerror or exc}") from None
        raise
    if not is_loopback(host) and host != "localhost":
        console.print(f"[yellow]warning:[/] listening on {host}: anyone who can reach this machine can use the "
                      f"page", highlight=False, soft_wrap=True)
    console.print(f"gensynth paint: {session.syn.parts.generator} on {session.syn.spec.name} "
                  f"({session.size[0]}x{session.size[1]}, {precision}, first image {warm_ms:.0f} ms) "
                  f"from {session.syn.source}", highlight=False, soft_wrap=True)
    click.echo(f"open {server.url}  (Ctrl-C to stop)", err=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped", highlight=False)
    finally:
        server.server_close()
