"""``gensynth evaluate``: FID, KID, precision/recall, mIoU, MS-SSIM, LPIPS, colour/texture of a trained run."""
from __future__ import annotations

import json
from pathlib import Path

import click

from gensynth.cli.console import table_console


def print_report(report, console) -> None:
    from rich.table import Table

    t = Table(title="evaluation", show_lines=False)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in report.metrics.items():
        t.add_row(k, "n/a" if v != v else f"{v:.4f}")
    console.print(t)
    if report.per_class.get("iou"):
        c = Table(title="per-class IoU (generated images)")
        c.add_column("class")
        c.add_column("IoU", justify="right")
        for name, v in report.per_class["iou"].items():
            c.add_row(name, f"{v:.4f}")
        console.print(c)


@click.command()
@click.option("--checkpoint", "-c", required=True, help="run directory or checkpoint directory")
@click.option("--data", default=None, help="dataset name (default: the run's)")
@click.option("--data-root", default=None, help="shards or raw layout of the dataset (default: the run's)")
@click.option("--split", default=None, help="split to evaluate (default: data.val_split)")
@click.option("--size", default=None, help="evaluation resolution HxW (default: the run's training resolution)")
@click.option("--metrics", "-m", default=None,
              help="comma list of: fid, kid, prec-recall, miou, ms-ssim (alias diversity), lpips, color-texture "
                   "[default: the run's eval.metrics, else fid,color-texture, skipping those whose weights file "
                   "or package is missing]")
@click.option("--out", "-o", default=None, type=click.Path(dir_okay=False), help="JSON report path")
@click.option("--no-ema", is_flag=True, help="evaluate the raw generator instead of the EMA one")
@click.option("--num-samples", default=None, type=click.IntRange(1), help="only the first N label maps")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--set", "sets", multiple=True, help="eval.KEY=VALUE (e.g. eval.fid_weights=/path, eval.segmenter=...)")
@click.option("--device", default="auto", show_default=True)
def command(checkpoint, data, data_root, split, size, metrics, out, no_ema, num_samples, batch_size, sets, device):
    """Evaluate a trained generator on the validation split; prints a table and writes a JSON report.

    FID follows the OASIS protocol (pytorch-fid InceptionV3, pool3, bilinear resize to 299, one EMA sample per
    validation label map). mIoU uses eval.segmenter (default: the run's own discriminator).
    """
    from rich.console import Console

    from gensynth.api import load_model, resolve_device
    from gensynth.config import parse_set
    from gensynth.errors import ConfigError
    from gensynth.eval.evaluate import evaluate, parse_metrics
    from gensynth.eval.requirements import plan_evaluation

    names = parse_metrics(metrics) if metrics is not None else None
    dev = resolve_device(device)
    m = load_model(checkpoint, ema=not no_ema, device=dev)
    if data is not None and data != m.config.data.name:
        raise ConfigError(f"--data {data!r} differs from the dataset the run was trained on "
                          f"({m.config.data.name!r}); a model is evaluated on its own dataset")
    overrides = parse_set(list(sets))
    if data_root is not None:
        overrides["data.root"] = data_root
    if split is not None:
        overrides["data.val_split"] = split
    if size is not None:
        overrides["data.size"] = size
    if num_samples is not None:
        overrides["eval.num_samples"] = num_samples
    cfg = m.checkpoint.config_with(overrides)
    console = Console(stderr=True)
    plan = plan_evaluation(cfg, m.parts, metrics=names, checkpoint=checkpoint, device=dev,
                           warn=lambda msg: console.print(f"[yellow]warning:[/] {msg}", highlight=False))
    if not plan.metrics:
        raise ConfigError("no metric can run: " + "; ".join(f"{k}: {v}" for k, v in plan.skipped.items()))
    report = evaluate(m.generator, m.parts, cfg, device=dev, metrics=plan.metrics, checkpoint=checkpoint,
                      batch_size=batch_size, tools=plan.tools())
    if plan.skipped:
        report.protocol["skipped"] = dict(plan.skipped)
    report.protocol["checkpoint"] = str(m.checkpoint.path) if m.checkpoint else str(checkpoint)
    report.protocol["ema"] = not no_ema
    print_report(report, table_console())
    if out:
        p = Path(out)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(report.to_json(), indent=2))
        console.print(f"report written to {p}", highlight=False)
