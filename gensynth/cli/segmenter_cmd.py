"""``gensynth segmenter``: segmenters for mIoU (list them; train gensynth's small one on real data)."""
from __future__ import annotations

import click

from gensynth.cli.console import table_console


@click.group()
def command():
    """Segmenters used by `gensynth evaluate --metrics miou`."""


@command.command("list")
def list_segmenters():
    """Registered segmenters and the plugin that registered each."""
    from rich.table import Table

    from gensynth.plugins import get_host

    t = Table(title="segmenters")
    for col in ("name", "plugin", "description"):
        t.add_column(col)
    for e in get_host().registry("segmenters").entries():
        t.add_row(e.name, e.plugin, e.description)
    table_console().print(t)


@command.command("train")
@click.option("--data", default="demo", show_default=True, help="dataset name")
@click.option("--data-root", default=None, help="shards or raw layout")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="output directory")
@click.option("--steps", default=2000, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--width", default=32, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--set", "sets", multiple=True, help="data.KEY=VALUE overrides (e.g. data.size=[64,64])")
@click.option("--device", default="auto", show_default=True)
def train(data, data_root, out, steps, batch_size, width, lr, seed, sets, device):
    """Train the small gensynth segmenter on a dataset's real images (for mIoU where no public segmenter exists)."""
    from rich.console import Console

    from gensynth.api import resolve_device
    from gensynth.config import DataConfig, parse_set
    from gensynth.errors import ConfigError
    from gensynth.eval.segmenter_train import SegmenterTrainConfig, train_segmenter
    from gensynth.plugins import get_host

    spec = get_host().registry("datasets").get(data)
    doc = {"name": data, "root": data_root}
    for key, value in parse_set(list(sets)).items():
        if not key.startswith("data."):
            raise ConfigError(f"--set {key}: only data.* keys apply to segmenter training")
        doc[key[len("data."):]] = value
    data_cfg = DataConfig.model_validate(doc)
    console = Console(stderr=True)
    path, loss = train_segmenter(data_cfg, spec, out, SegmenterTrainConfig(steps=steps, batch_size=batch_size, lr=lr,
                                                                           width=width, seed=seed),
                                 device=resolve_device(device), log=lambda s: console.print(s, highlight=False))
    console.print(f"segmenter written to {path} (final loss {loss:.4f}); use it with "
                  f"--set eval.segmenter=gensynth-segmenter --set eval.segmenter_options.path={path}", highlight=False)
