"""``gensynth datasets``: list, convert, inspect and preview datasets and their shards."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import click

from gensynth.cli.console import table_console
from rich.console import Console
from rich.table import Table

from gensynth.errors import DataError


def _spec(name: str, root: str | None = None):
    from gensynth.plugins import registry

    spec = registry("datasets").get(name)
    if root is not None and hasattr(spec, "for_root") and getattr(spec, "root", None) is None:
        spec = spec.for_root(root)
    return spec


def _parse_size(value: str | None) -> tuple[int, int] | None:
    """The same HxW syntax as ``train --size`` and ``--set data.size=...`` (:func:`gensynth.config.parse_size`)."""
    from gensynth.config import parse_size

    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group()
def command():
    """Datasets: list them, convert official layouts to shards, inspect and preview shards."""


@command.command("list")
def list_cmd():
    """Registered datasets with their class count and default size."""
    from gensynth.plugins import registry

    table = Table("name", "classes", "size (HxW)", "instances", "plugin", "description")
    for e in registry("datasets").entries():
        try:
            n = str(e.obj.num_classes)
        except Exception:
            n = "from data"
        h, w = e.obj.default_size
        table.add_row(e.name, n, f"{h}x{w}", "yes" if e.obj.has_instances else "no", e.plugin, e.description)
    table_console().print(table)


@command.command()
@click.argument("name")
@click.option("--source", required=True, help="root of the dataset's official layout")
@click.option("--split", default="train", show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output directory for the shards")
@click.option("--resize", default=None, help="store images/labels pre-resized to HxW (e.g. 256x512)")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1), help="worker processes")
@click.option("--skip-bad", is_flag=True, help="skip bad samples and write NAME-SPLIT.skipped.json")
@click.option("--shard-size", default=1000, show_default=True, type=click.IntRange(1), help="samples per shard")
def convert(name, source, split, out, resize, workers, skip_bad, shard_size):
    """Convert NAME's official layout under --source into NAME-SPLIT-%06d.tar shards plus a card."""
    from gensynth.data.convert import ConvertOptions, convert as run

    spec = _spec(name, source)
    if not Path(source).expanduser().is_dir():
        raise DataError(f"--source {source} is not a directory")
    console = Console(stderr=True)
    card = run(spec, str(Path(source).expanduser()), split, out,
               ConvertOptions(resize=_parse_size(resize), workers=workers, skip_bad=skip_bad,
                              shard_size=shard_size), console=console)
    msg = f"wrote {card['num_samples']} samples in {len(card['shards'])} shard(s) to {out}"
    if card["skipped"]:
        msg += f"; skipped {card['skipped']} (see {Path(out) / f'{name}-{split}.skipped.json'})"
    click.echo(msg)


def _find_cards(path: str, split: str | None = None) -> list[tuple[str, dict]]:
    """(base, card) of a card file, or of every ``*.card.json`` in a folder (one per converted split), optionally
    only the one of ``split``."""
    from gensynth.data import openers

    if path.endswith(".card.json"):
        return [(openers.dirname(path), json.loads(openers.read_bytes(path)))]
    if path.startswith(("http://", "https://")):
        raise DataError(f"{path}: an HTTP server cannot be listed; pass a card's URL "
                        f"({path.rstrip('/')}/NAME-SPLIT.card.json)")
    names = openers.list_dir(path, "*.card.json")
    if not names:
        raise DataError(f"{path}: no *.card.json here (convert a dataset with gensynth datasets convert, or pass "
                        f"a card's path)")
    cards = [(path, json.loads(openers.read_bytes(n))) for n in names]
    if split is not None:
        chosen = [c for c in cards if c[1].get("split") == split]
        if not chosen:
            raise DataError(f"{path}: no card of split {split!r} (cards here: "
                            f"{', '.join(sorted(str(c[1].get('split')) for c in cards))})")
        return chosen
    return cards


def _inspect_card(base: str, card: dict, path: str, console: Console) -> list[str]:
    from gensynth.data import openers
    from gensynth.data.shards import check_card_shard_names, iter_tar_samples

    check_card_shard_names(card, path)
    problems = []
    for s in card["shards"]:
        url = openers.join(base, s["name"])
        data = openers.read_bytes(url)
        if "bytes" in s and len(data) != s["bytes"]:
            problems.append(f"{url}: {len(data)} bytes, card says {s['bytes']}")
        if "sha256" in s and hashlib.sha256(data).hexdigest() != s["sha256"]:
            problems.append(f"{url}: checksum mismatch")
        try:
            n = sum(1 for _ in iter_tar_samples(io.BytesIO(data), url))
        except DataError as exc:
            problems.append(str(exc))
            continue
        if n != s["count"]:
            problems.append(f"{url}: {n} samples, card says {s['count']}")
    table = Table("field", "value", title=f"{card.get('dataset')} {card.get('split')}")
    for key in ("num_samples", "source", "resize", "has_instances", "skipped", "tool"):
        table.add_row(key, str(card.get(key)))
    table.add_row("shards", str(len(card["shards"])))
    freq = sorted(card.get("class_pixel_frequencies", {}).items(), key=lambda kv: -kv[1])[:10]
    table.add_row("top classes", ", ".join(f"{k} {v:.3f}" for k, v in freq))
    console.print(table)
    if not problems:
        console.print(f"[green]ok[/]: {card.get('split')}: {len(card['shards'])} shard(s) match the card")
    return problems


@command.command()
@click.argument("path")
@click.option("--split", default=None, help="only this split's card (default: every card in PATH)")
def inspect(path, split):
    """Verify shards against their cards (counts, sizes, checksums) and print each card."""
    console = Console()
    problems = []
    for base, card in _find_cards(path, split):
        problems += _inspect_card(base, card, path, console)
    if problems:
        raise DataError("shards do not match their card:\n  " + "\n  ".join(problems))


@command.command()
@click.argument("name")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder to write the label maps to")
@click.option("--data-root", default=None, help="shards or official layout (the demo needs none)")
@click.option("--split", default="val", show_default=True)
@click.option("--num", default=4, show_default=True, type=click.IntRange(1))
@click.option("--size", default=None, help="HxW (default: the dataset's)")
@click.option("--colour", "colour", is_flag=True, help="write RGB colour masks in the class colours instead of id PNGs")
def labels(name, out, data_root, split, num, size, colour):
    """Write label maps of a dataset for ``gensynth generate --labels`` (and the paint app): the dataset's raw ids
    (id PNGs) or colour masks, one file per sample, named by the sample's key.

    \b
    Example:
      gensynth datasets labels demo --out labels/
      gensynth generate --checkpoint runs/oasis-demo --labels labels/ --out out/ --samples 4
    """
    from gensynth.config import DataConfig
    from gensynth.data.label_files import write_label_png
    from gensynth.data.loader import configure_spec, eval_batches

    cfg = DataConfig(name=name, root=data_root, size=_parse_size(size), num_workers=0)
    spec = configure_spec(_spec(name, data_root), cfg)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for batch in eval_batches(cfg, spec, batch_size=num, split=split, limit=num, num_workers=0):
        for key, ids in zip(batch.keys, batch.label):
            path = folder / (str(key).replace("/", "_") + ".png")
            write_label_png(path, ids.numpy(), spec, colour=colour)
            written.append(path)
    if not written:
        raise DataError(f"{name} {split}: no samples to write")
    click.echo(f"wrote {len(written)} {'colour masks' if colour else 'label maps (raw ids)'} of {name} {split} to "
               f"{folder} (e.g. {written[0].name})")


@command.command()
@click.argument("name")
@click.option("--data-root", default=None, help="shards or official layout (default: the demo needs none)")
@click.option("--split", default="val", show_default=True)
@click.option("--num", default=8, show_default=True, type=click.IntRange(1))
@click.option("--size", default=None, help="HxW (default: the dataset's)")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="grid PNG to write")
def preview(name, data_root, split, num, size, out):
    """Draw images beside their coloured label maps into one grid PNG."""
    import numpy as np
    import torch
    from PIL import Image

    from gensynth.config import DataConfig
    from gensynth.data.loader import configure_spec, eval_batches

    cfg = DataConfig(name=name, root=data_root, size=_parse_size(size), num_workers=0)
    spec = configure_spec(_spec(name), cfg)
    palette = np.array([c.color for c in spec.classes], dtype=np.uint8)
    rows = []
    for batch in eval_batches(cfg, spec, batch_size=num, split=split, limit=num, num_workers=0):
        for img, lab in zip(batch.image, batch.label):
            rgb = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
            rows.append(np.concatenate([rgb, palette[lab.numpy()]], axis=1))
    if not rows:
        raise DataError(f"{name} {split}: no samples to preview")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)
    click.echo(f"wrote {len(rows)} samples to {out}")
