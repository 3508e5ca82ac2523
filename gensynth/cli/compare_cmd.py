"""``gensynth compare``: the same generator against several discriminators, one table.

Every run shares the seed, the data, the generator and every other setting; only the
discriminator (and, where it must, the objective that follows it) changes. Each run is trained,
evaluated on its EMA generator and summarised in one table, written as JSON and CSV.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import click
from rich.console import Console

from gensynth.cli.console import table_console
from rich.table import Table


def plan_runs(model: str, discriminators: list[str], data: str, steps: int, out: Path, overrides: dict) -> list:
    """(name, config, provenance, parts) per discriminator, all resolved before anything trains: an incompatible
    combination fails first. Each run takes its own ``model.discriminator_options.<name>.*`` options."""
    from gensynth.build import resolve_parts
    from gensynth.config import resolve

    plans = []
    for name in discriminators:
        cli = {**overrides, "model.preset": model, "data.name": data, "model.discriminator": name,
               "trainer.steps": steps, "trainer.run_dir": str(out / name)}
        cfg, provenance = resolve(cli)
        plans.append((name, cfg, provenance, resolve_parts(cfg)))
    return plans


def compare_runs(model: str, discriminators: list[str], data: str, steps: int, out: Path,
                 metrics: list[str] | None, overrides: dict, console: Console) -> list[dict]:
    import torch

    from gensynth.api import load_model
    from gensynth.build import run_notes
    from gensynth.eval.evaluate import evaluate_generator
    from gensynth.train.trainer import run_training

    from gensynth.eval.requirements import plan_evaluation

    plans = plan_runs(model, discriminators, data, steps, out, overrides)
    evals = {}
    for name, cfg, provenance, parts in plans:  # every evaluation requirement before anything trains
        evals[name] = plan_evaluation(cfg, parts, metrics=metrics, run_later=True,
                                      warn=lambda msg: console.print(f"[yellow]warning:[/] {msg}", highlight=False))
    rows = []
    for name, cfg, provenance, parts in plans:
        console.print(f"[bold]== {model} with discriminator {name}[/] (objective {parts.objective}, "
                      f"losses {parts.losses or '-'})")
        for note in run_notes(parts, provenance):
            console.print(f"   note: {note}")
        result = run_training(cfg, provenance, console=console)
        loaded = load_model(result.run_dir, ema=True, device="cpu")
        scores = evaluate_generator(loaded.generator, loaded.parts, loaded.config, device=torch.device("cpu"),
                                    metrics=evals[name].metrics, checkpoint=result.run_dir) if evals[name].metrics else {}
        rows.append({"discriminator": name, "objective": parts.objective, "losses": parts.losses,
                     "steps": result.step, "run_dir": str(result.run_dir), **scores})
    return rows


@click.command()
@click.option("--model", "model", default="oasis", show_default=True, help="model preset")
@click.option("--discriminators", required=True, help="comma-separated discriminator names")
@click.option("--data", default="demo", show_default=True)
@click.option("--data-root", default=None)
@click.option("--steps", type=int, default=200, show_default=True)
@click.option("--size", default=None, help="training resolution HxW for every run (default: the dataset's)")
@click.option("--scale", default=None, help="model size of every run: tiny, small, paper (default: the preset's "
                                            "for the dataset)")
@click.option("--metrics", default=None,
              help="comma-separated metrics [default: eval.metrics, else fid,color-texture, skipping those whose "
                   "weights file or package is missing]")
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("runs/compare"), show_default=True)
@click.option("--set", "sets", multiple=True, help="section.key=value overrides applied to every run")
def command(model, discriminators, data, data_root, steps, size, scale, metrics, out, sets):
    """Train the same model against each discriminator (same seed and data), evaluate, tabulate."""
    from gensynth.config import parse_set

    console = table_console()
    overrides = parse_set(sets)
    if data_root:
        overrides["data.root"] = data_root
    if size:
        overrides["data.size"] = size
    if scale:
        overrides["model.scale"] = scale
    names = [d.strip() for d in discriminators.split(",") if d.strip()]
    chosen = None if metrics is None else [m.strip() for m in metrics.split(",") if m.strip()]
    rows = compare_runs(model, names, data, steps, out, chosen, overrides, console)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(rows, indent=2, default=str))
    keys = sorted({k for r in rows for k in r if k not in ("losses",)}, key=lambda k: (k != "discriminator", k))
    with open(out / "compare.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    table = Table(title=f"{model} on {data}: {steps} steps per discriminator")
    for k in keys:
        if k != "run_dir":
            table.add_column(k)
    for r in rows:
        table.add_row(*[f"{r.get(k):.4g}" if isinstance(r.get(k), float) else str(r.get(k, "-")) for k in keys if k != "run_dir"])
    console.print(table)
    console.print(f"written: {out / 'compare.json'}, {out / 'compare.csv'}")
