"""``gensynth train``: one command from a laptop CPU to torchrun on many GPU nodes.

Every flag is a shortcut for a configuration key (``--set section.key=value`` reaches all of them);
layering: preset < dataset < YAML (``--config``) < flags and ``--set``.
"""
from __future__ import annotations

import json
import os

import click
from rich.console import Console


#: what --official-recipe sets: the official OASIS training numerics (no stable start, constant EMA decay)
OFFICIAL_RECIPE = {"trainer.stable_start": False, "trainer.ema_warmup": False}

#: option keys the ablation flags set (flat: they apply to the chosen generator / objective; no deprecation note)
FLAG_OPTION_KEYS = ("model.generator_options.use_3d_noise", "model.objective_options.balancing")


def _flags_to_config(opts: dict) -> dict:
    """Map the command's flags onto dotted config keys (contract 5)."""
    from gensynth.config import parse_set
    from gensynth.errors import ConfigError

    cli: dict = {}
    simple = {"model": "model.preset", "data": "data.name", "data_root": "data.root", "generator": "model.generator",
              "discriminator": "model.discriminator", "objective": "model.objective", "steps": "trainer.steps",
              "batch_size": "trainer.batch_size", "precision": "trainer.precision", "run_dir": "trainer.run_dir",
              "init_from": "trainer.init_from", "scale": "model.scale", "size": "data.size"}
    for opt, key in simple.items():
        if opts.get(opt) is not None:
            cli[key] = opts[opt]
    for item in opts.get("loss") or ():
        name, sep, weight = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--loss expects NAME=WEIGHT (e.g. --loss labelmix=5), got {item!r}")
        try:
            cli[f"model.losses.{name.strip()}"] = float(weight)
        except ValueError:
            raise ConfigError(f"--loss {name.strip()}: weight {weight!r} is not a number") from None
    if opts.get("no_3d_noise"):
        cli["model.generator_options.use_3d_noise"] = False
    if opts.get("no_labelmix"):
        cli["model.losses.labelmix"] = 0.0
    if opts.get("no_balancing"):
        cli["model.objective_options.balancing"] = False
    if opts.get("paper"):
        cli["model.values"] = "paper"
    if opts.get("official_recipe"):
        cli.update(OFFICIAL_RECIPE)
    cli.update(parse_set(opts.get("set_items") or ()))
    return cli


def _launch(nproc: int, cli: dict, config_path: str | None, resume: bool) -> None:
    """Re-run this command under torch.distributed.run (torchrun's own launcher), one node, ``nproc`` processes."""
    from torch.distributed.run import parse_args, run

    args = ["train"]
    if config_path:
        args += ["--config", config_path]
    for key, value in cli.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    if resume:
        args.append("--resume")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run(parse_args(["--standalone", f"--nproc-per-node={nproc}", *_entry_point(), *args]))


def _entry_point() -> list[str]:
    """How torchrun starts each process: the ``gensynth`` command beside this Python when there is one (its
    ``sys.path`` does not start with the current folder, so a clone named gensynth there cannot shadow the
    package), else ``python -m gensynth``."""
    import shutil
    import sys

    script = shutil.which("gensynth", path=os.path.dirname(sys.executable))
    return ["--no-python", script] if script else ["--module", "gensynth"]


@click.command()
@click.option("--model", help="model preset (gensynth models list), e.g. oasis, spade, spade+")
@click.option("--data", help="dataset name (gensynth datasets list), e.g. demo, cityscapes, ade20k")
@click.option("--data-root", help="shards (dir, brace pattern, s3://, http(s)://) or the dataset's official layout")
@click.option("--size", help="training resolution HxW (e.g. 64x128; one number for a square); default: the dataset's")
@click.option("--scale", help="model size: tiny (CPU minutes), small (one small GPU), paper (published widths and "
                              "batch); default: tiny on the demo data, else paper")
@click.option("--generator", help="replace the preset's generator")
@click.option("--discriminator", help="replace the preset's discriminator (its objective follows unless --objective)")
@click.option("--objective", help="replace the preset's adversarial objective")
@click.option("--loss", multiple=True, metavar="NAME=W", help="set a loss term weight (0 disables); repeatable")
@click.option("--no-3d-noise", is_flag=True, help="generator without 3D noise (OASIS ablation)")
@click.option("--no-labelmix", is_flag=True, help="drop the LabelMix term")
@click.option("--no-balancing", is_flag=True, help="N+1 loss without class balancing")
@click.option("--paper", is_flag=True, help="use the paper's stated values where they differ from the official code")
@click.option("--official-recipe", is_flag=True,
              help="the official training numerics: no stable start for D, constant EMA decay "
                   "(trainer.stable_start=false trainer.ema_warmup=false)")
@click.option("--steps", type=int, help="total optimisation steps")
@click.option("--batch-size", type=int, help="global batch size (divided among processes)")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]))
@click.option("--run-dir", help="run directory (default runs/<model>-<data>); re-running continues it")
@click.option("--resume", is_flag=True, help="require an existing checkpoint in the run directory and continue it")
@click.option("--init-from", help="initialise weights from a gensynth checkpoint (shapes that differ stay fresh)")
@click.option("--nproc", type=int, default=None, help="launch N local processes with torch.distributed.run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML configuration file")
@click.option("--set", "set_items", multiple=True, metavar="KEY=VALUE", help="any config key, e.g. trainer.log_every=10")
def command(**opts):
    """Train a model (single process, or DDP when started by torchrun).

    \b
    Examples:
      gensynth train --model oasis --data demo --steps 300
      gensynth train --model oasis --data cityscapes --data-root /data/cityscapes --size 64x128 --scale tiny
      gensynth train --model oasis --data cityscapes --data-root /data/cityscapes
      torchrun --nnodes 2 --nproc-per-node 8 -m gensynth train --model oasis --data ade20k --data-root s3://b/ade
    """
    from gensynth.config import resolve
    from gensynth.train.distributed import launched_by_torchrun
    from gensynth.train.trainer import run_training

    cli = _flags_to_config(opts)
    nproc = opts.get("nproc")
    if nproc is not None and nproc > 1 and not launched_by_torchrun():
        _launch(nproc, cli, opts.get("config_path"), opts.get("resume"))
        return
    cfg, provenance = resolve(cli, opts.get("config_path"))
    console = Console(stderr=True)
    if int(os.environ.get("RANK", "0")) == 0:
        from gensynth.build import resolve_parts, run_notes

        parts = resolve_parts(cfg)  # fails here, before any set-up, when the parts cannot work together
        console.print(f"[bold]{cfg.model.preset}[/]: generator {parts.generator}, discriminator {parts.discriminator}, "
                      f"objective {parts.objective}, losses {parts.losses or '-'}", highlight=False, soft_wrap=True)
        for note in run_notes(parts, provenance, exclude=FLAG_OPTION_KEYS):
            console.print(f"   note: {note}", highlight=False)
    result = run_training(cfg, provenance, console=console, resume=True if opts.get("resume") else None)
    if int(os.environ.get("RANK", "0")) == 0:
        how = f"stopped by {result.stopped_by}" if result.stopped_by else "done"
        click.echo(f"{how}: step {result.step}; run directory {result.run_dir} "
                   f"(samples/, checkpoints/, metrics.jsonl, tb/)")
        for finding in result.health:  # already printed when found; repeated so that the end of the log says it
            click.echo(f"health warning: {finding}", err=True)
