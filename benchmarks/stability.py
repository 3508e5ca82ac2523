"""Does the discriminator die? The official OASIS recipe against gensynth's stable start, over seeds (issue 26).

Trains, with the real trainer, every (configuration, recipe, seed):

* configurations (``CONFIGS``):
  - ``demo``: the OASIS demo preset at its defaults (64x64, batch 8, G 1.5M / D 0.08M parameters);
  - ``demo-tiny``: the tiny CI configuration of benchmarks/learning.py (32x32, batch 4);
  - ``cityscapes``: the genuine Cityscapes samples of ../shared/testdata-real (8 images) at 64x128, FULL widths
    (G 71M / D 22M parameters), batch 2: the configuration a user with one small GPU starts with;
  - ``folder``: a ``folder`` dataset (images/ + labels/ + classes.json, 64 training images of the demo's
    procedural scenes, 12 classes) at 64x64, batch 4, the demo preset's widths;
* recipes: ``official`` (``--official-recipe``: the official init and numerics, constant EMA decay) and
  ``stable`` (gensynth's default: the stable start of gensynth.train.stable_start).

**Dead discriminator (the definition counted here).** The symptom of a dead OASIS discriminator: its class
channels carry nothing, so the trainer's logged 10-step means of ``D_real`` and ``G_adv`` sit at ln(N+1) (the
cross-entropy of equal class probabilities) and LabelMix at ~0. A 10-step window is **pinned** when ``D_real`` and
``G_adv`` are both within 2% of ln(N+1) and LabelMix is under 1e-3. A run is **dead** when its last three
windows (30 steps) are pinned; ``dead steps`` counts the pinned windows after step 10 (x10), i.e. the time spent
on the plateau, also by runs that left it. The health monitor's ``d_spread_max`` series is kept beside it.

**Learning** of the runs that survive, at every checkpoint, of the trained generator itself, not its EMA (the
official recipe's constant EMA decay of 0.999 still holds ~75% of the random initial generator after 300 steps,
which would hide what the recipes do to G and D):
``d_miou`` = the discriminator as a segmenter of real images (validation split; Cityscapes: the 8 training images,
the only ones there are); ``seg_miou`` = mIoU of GENERATED images as segmented by a segmenter trained once on
real demo images (benchmarks/learning.py), for the demo-data configurations.

    OMP_NUM_THREADS=1 python benchmarks/stability.py                          # everything, 8 seeds, 2 processes
    OMP_NUM_THREADS=1 python benchmarks/stability.py --configs cityscapes --seeds 0-3 --jobs 1

Writes ``stability.json`` and ``stability.md`` to ``--out`` (default benchmarks/results/stability); runs already
in ``stability.json`` are kept and not run again (so a long benchmark can be run in parts).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results" / "stability"
TESTDATA = HERE.parent.parent / "shared" / "testdata-real"

PINNED_REL = 0.02  # D_real and G_adv within 2% of ln(N+1) ...
PINNED_LABELMIX = 1e-3  # ... and LabelMix under this: a pinned 10-step window
DEAD_WINDOWS = 3  # the last three windows pinned: dead


@dataclass
class Config:
    """One training configuration: dotted keys, horizon, checkpoint interval, whether the demo segmenter applies."""

    keys: dict[str, Any]
    steps: int
    every: int
    segmenter: bool = False
    needs: str | None = None  # a directory that must exist (real data)


def _configs() -> dict[str, Config]:
    from learning import TINY, TINY_VARIANTS

    demo_widths = {"model.generator_options.channels": 16, "model.generator_options.num_res_blocks": 4,
                   "model.generator_options.z_dim": 16, "model.generator_options.norm": "batch",
                   "model.generator_options.spade_hidden": 32, "model.discriminator_options.num_res_blocks": 4,
                   "model.discriminator_options.width": 0.125, "optim.lr_g": 2e-4, "trainer.ema_decay": 0.999,
                   "trainer.bn_refresh_batches": 10}
    return {
        "demo": Config({"data.name": "demo"}, steps=150, every=50, segmenter=True),
        "demo-tiny": Config({"data.name": "demo", **TINY, **TINY_VARIANTS["oasis"]}, steps=300, every=100,
                            segmenter=True),
        "cityscapes": Config({"data.name": "cityscapes", "data.root": str(TESTDATA / "cityscapes"),
                              "data.size": [64, 128], "trainer.batch_size": 2, "data.val_split": "train"},
                             steps=40, every=20, needs=str(TESTDATA / "cityscapes")),
        "folder": Config({"data.name": "folder", "data.size": [64, 64], "trainer.batch_size": 4, **demo_widths},
                         steps=150, every=50, segmenter=True),
    }


RECIPES = {"official": {"trainer.stable_start": False, "trainer.ema_warmup": False}, "stable": {}}


def make_folder_dataset(root: Path, train: int = 64, val: int = 16, size: int = 64) -> Path:
    """Write the demo's procedural scenes as a ``folder`` dataset (PNG images, id PNG labels, classes.json)."""
    import numpy as np
    from PIL import Image

    from gensynth_datasets.demo import DemoSpec, make_scene

    if (root / "classes.json").is_file():
        return root
    spec = DemoSpec()
    classes = [{"id": c.id if hasattr(c, "id") else i, "name": c.name, "color": list(c.color)}
               for i, c in enumerate(spec.classes)]
    for split, n, seed in (("train", train, 0), ("val", val, 1)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(1000 + seed)
        for i in range(n):
            image, label = make_scene(rng, size, size)
            Image.fromarray(image).save(root / "images" / split / f"scene_{i:04d}.png")
            Image.fromarray(label.astype(np.uint8)).save(root / "labels" / split / f"scene_{i:04d}.png")
    (root / "classes.json").write_text(json.dumps({"dontcare": spec.dontcare, "classes": classes}, indent=1))
    return root


@dataclass
class Job:
    config: str
    recipe: str
    seed: int
    work: str
    out: str
    segmenter_steps: int = 400
    extra: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None  # override of the configuration's horizon (checkpoints every third of it)

    @property
    def name(self) -> str:
        return f"{self.config}/{self.recipe}/seed{self.seed}"


def overrides(job: Job, cfg: Config, run_dir: Path) -> dict[str, Any]:
    steps, every = (job.steps, max(10, job.steps // 3)) if job.steps else (cfg.steps, cfg.every)
    keys = {"model.preset": "oasis", "data.num_workers": 0, **cfg.keys, **RECIPES[job.recipe],
            "trainer.steps": steps, "trainer.checkpoint_every": every, "trainer.sample_every": 10 ** 6,
            "trainer.log_every": 10, "trainer.keep_last": 1000, "trainer.seed": job.seed, "eval.every": 0,
            "trainer.run_dir": str(run_dir), "data.cache_dir": str(Path(job.work) / "cache"), **job.extra}
    if cfg.keys.get("data.name") == "folder":
        keys["data.root"] = str(make_folder_dataset(Path(job.work) / "folder-data"))
    return keys


def health_series(run_dir: Path) -> list[tuple[int, float]]:
    """(step, d_spread_max) of every health check of a run."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["d_spread_max"]) for r in rows if r.get("kind") == "health" and "d_spread_max" in r]


def pinned_windows(run_dir: Path) -> list[tuple[int, bool]]:
    """(step, pinned) for every logged 10-step window of a run (see the module docstring)."""
    from gensynth.build import resolve_parts
    from gensynth.config import RunConfig

    doc = json.loads((run_dir / "config.json").read_text())
    level = math.log(resolve_parts(RunConfig.model_validate(doc["config"])).num_classes + 1)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    out = []
    for r in rows:
        if r.get("kind") == "train" and "D_real" in r:
            pinned = (abs(r["D_real"] - level) < PINNED_REL * level and abs(r["G_adv"] - level) < PINNED_REL * level
                      and r.get("labelmix", 0.0) < PINNED_LABELMIX)
            out.append((r["step"], pinned))
    return out


def verdict(windows: list[tuple[int, bool]]) -> tuple[bool, int]:
    """(dead at the end, steps after step 10 spent pinned) from a run's pinned windows."""
    tail = [p for _, p in windows[-DEAD_WINDOWS:]]
    dead = len(tail) == DEAD_WINDOWS and all(tail)
    return dead, sum(10 for step, p in windows if step > 10 and p)


def rejudge(row: dict[str, Any], work: Path) -> dict[str, Any]:
    """The row with ``dead``/``dead_steps`` judged again from its run directory (when it is still there)."""
    run_dir = work / "runs" / row["config"] / row["recipe"] / f"seed{row['seed']}"
    if (run_dir / "metrics.jsonl").is_file():
        row["dead"], row["dead_steps"] = verdict(pinned_windows(run_dir))
    return row


def demo_segmenter(cfg: Config, work: Path, steps: int):
    """The segmenter of benchmarks/learning.py, trained on real demo images at the configuration's size (cached)."""
    import learning as L
    from gensynth.build import resolve_parts
    from gensynth.config import resolve

    size = list(cfg.keys.get("data.size", [64, 64]))
    demo_cfg, _ = resolve({"model.preset": "oasis", "data.name": "demo", "data.num_workers": 0, "data.size": size,
                           "data.cache_dir": str(work / "cache")})
    settings = L.Settings(cache_dir=work / "segmenters", segmenter_steps=steps, seed=0)
    return L.real_segmenter(demo_cfg, resolve_parts(demo_cfg), settings, log=lambda s: None)


def run_job(job: Job) -> dict[str, Any]:
    """Train one run and measure it; returns its row (for stability.json)."""
    import torch

    torch.set_num_threads(1)
    import learning as L
    from gensynth.api import load_model
    from gensynth.config import resolve

    cfg = _configs()[job.config]
    run_dir = Path(job.work) / "runs" / job.config / job.recipe / f"seed{job.seed}"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    rc, prov = resolve(overrides(job, cfg, run_dir))
    result, seconds = L.train(rc, prov)
    series = health_series(run_dir)
    dead, dead_steps = verdict(pinned_windows(run_dir))
    G0, D0, parts = L.initial_models(rc)
    batches = L.val_batches(rc, parts, limit=64)
    features = L.PooledFeatures(demo_segmenter(cfg, Path(job.work), job.segmenter_steps)) if cfg.segmenter else None
    curve = []
    for ck in [None, *L.checkpoint_dirs(run_dir)]:
        if ck is None:
            G, D, step = G0, D0, 0
        else:
            m = load_model(ck, ema=False, with_discriminator=True)
            G, D, step = m.generator, m.discriminator, int(m.checkpoint.meta["step"])
        row: dict[str, Any] = {"step": step}
        d = L.discriminator_miou(D, batches, parts)
        if d is not None:
            row["d_miou"] = d[0]
        if features is not None:
            row["seg_miou"] = L.segmentation_miou(features, L.generate(G, batches), [b.ids for b in batches],
                                                  parts)[0]
        curve.append(row)
    return {"config": job.config, "recipe": job.recipe, "seed": job.seed, "steps": result.step,
            "seconds": round(seconds, 1), "dead": dead, "dead_steps": dead_steps, "spread": series,
            "health": result.health, "curve": curve, "final_losses": {
                k: v for k, v in result.metrics.items() if k in ("D_fake", "D_real", "G_adv", "labelmix")}}


def parse_seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    return out


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (configuration, recipe): dead runs, dead steps, and the median learning of the surviving runs."""
    out = []
    keys = sorted({(r["config"], r["recipe"]) for r in rows}, key=lambda k: (list(_configs()).index(k[0]), k[1]))
    for config, recipe in keys:
        mine = [r for r in rows if r["config"] == config and r["recipe"] == recipe]
        alive = [r for r in mine if not r["dead"]]
        entry = {"config": config, "recipe": recipe, "runs": len(mine), "dead": sum(r["dead"] for r in mine),
                 "dead_seeds": sorted(r["seed"] for r in mine if r["dead"]),
                 "median_dead_steps": _median([r["dead_steps"] for r in mine]),
                 "steps": mine[0]["steps"] if mine else None}
        steps = sorted({c["step"] for r in alive for c in r["curve"]})
        for metric in ("d_miou", "seg_miou"):
            curve = []
            for s in steps:
                vals = [c[metric] for r in alive for c in r["curve"] if c["step"] == s and metric in c]
                if vals:
                    curve.append((s, _median(vals)))
            if curve:
                entry[f"median_{metric}"] = curve
        entry["median_final_d_miou_all"] = _median([r["curve"][-1]["d_miou"] for r in mine
                                                    if "d_miou" in r["curve"][-1]])
        if any("seg_miou" in r["curve"][-1] for r in mine):
            entry["median_final_seg_miou_all"] = _median([r["curve"][-1]["seg_miou"] for r in mine])
        out.append(entry)
    return out


def _f(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def markdown(rows: list[dict[str, Any]], table: list[dict[str, Any]], command: str) -> str:
    lines = ["# Stability: the official recipe vs the stable start\n", f"`{command}`\n",
             f"Dead: the last {DEAD_WINDOWS} logged 10-step windows pinned (D_real and G_adv within "
             f"{PINNED_REL:.0%} of ln(N+1), LabelMix under {PINNED_LABELMIX:g}). Learning: medians over the runs that "
             f"survive; `all` = median over every run, dead ones included.\n",
             "| configuration | recipe | steps | dead runs | dead seeds | median dead steps | D mIoU (survivors) "
             "| gen. mIoU (survivors) | final D mIoU (all) | final gen. mIoU (all) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for e in table:
        d = " ".join(f"{s}:{v:.3f}" for s, v in e.get("median_d_miou", []))
        g = " ".join(f"{s}:{v:.3f}" for s, v in e.get("median_seg_miou", []))
        lines.append(f"| {e['config']} | {e['recipe']} | {e['steps']} | {e['dead']}/{e['runs']} | "
                     f"{','.join(map(str, e['dead_seeds'])) or '-'} | {_f(e['median_dead_steps'])} | {d or '-'} | "
                     f"{g or '-'} | {_f(e['median_final_d_miou_all'])} | {_f(e.get('median_final_seg_miou_all'))} |")
    lines.append("\nPer run (final step): D mIoU / generated-image mIoU / dead steps / health findings\n")
    lines.append("| run | dead | dead steps | D mIoU | gen. mIoU | seconds | health findings |")
    lines.append("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["config"], r["recipe"], r["seed"])):
        last = r["curve"][-1]
        found = "; ".join(h.split(":")[0] for h in r["health"]) or "-"
        lines.append(f"| {r['config']}/{r['recipe']}/seed{r['seed']} | {'dead' if r['dead'] else 'alive'} | "
                     f"{r['dead_steps']} | {_f(last.get('d_miou'))} | {_f(last.get('seg_miou'))} | {r['seconds']} | "
                     f"{found} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=",".join(_configs()), help="comma-separated: " + ", ".join(_configs()))
    p.add_argument("--recipes", default="official,stable")
    p.add_argument("--seeds", default="0-7", help="e.g. 0-7 or 0,3,5")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--work", type=Path, default=None, help="run directories and caches (default: a temp dir)")
    p.add_argument("--steps", type=int, default=None, help="override every configuration's horizon")
    p.add_argument("--segmenter-steps", type=int, default=400)
    p.add_argument("--set", dest="sets", action="append", default=[], help="extra dotted key=value for every run")
    args = p.parse_args(argv)
    from gensynth.config import parse_set

    configs = _configs()
    names = [c for c in args.configs.split(",") if c]
    unknown = [c for c in names if c not in configs]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; known: {', '.join(configs)}")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="gensynth-stability-"))
    extra = parse_set(args.sets)
    done_path = args.out / "stability.json"
    rows: list[dict[str, Any]] = json.loads(done_path.read_text())["runs"] if done_path.is_file() else []
    have = {(r["config"], r["recipe"], r["seed"]) for r in rows}
    jobs = []
    for name in names:
        if configs[name].needs and not Path(configs[name].needs).is_dir():
            print(f"skipping {name}: {configs[name].needs} is absent")
            continue
        for recipe in args.recipes.split(","):
            for seed in parse_seeds(args.seeds):
                if (name, recipe, seed) not in have:
                    jobs.append(Job(name, recipe, seed, str(work), str(args.out), args.segmenter_steps, extra,
                                    args.steps))
    if any(j.config == "folder" for j in jobs):
        make_folder_dataset(work / "folder-data")
    for name in sorted({j.config for j in jobs if configs[j.config].segmenter}):
        demo_segmenter(configs[name], work, args.segmenter_steps)  # trained once here, not by parallel runs
    command = "OMP_NUM_THREADS=1 python benchmarks/stability.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()

    def save() -> None:
        for row in rows:
            rejudge(row, work)
        table = summary(rows)
        done_path.write_text(json.dumps({"command": command, "pinned_rel": PINNED_REL,
                                         "pinned_labelmix": PINNED_LABELMIX, "dead_windows": DEAD_WINDOWS,
                                         "summary": table, "runs": rows}, indent=1))
        (args.out / "stability.md").write_text(markdown(rows, table, command))

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        for job, row in zip(jobs, pool.map(run_job, jobs)):
            rows.append(row)
            print(f"{job.name}: {'DEAD' if row['dead'] else 'alive'} (dead steps {row['dead_steps']}, "
                  f"final {row['curve'][-1]}, {row['seconds']} s; {time.perf_counter() - t0:.0f} s elapsed)",
                  flush=True)
            save()
    save()
    print(markdown(rows, summary(rows), command))
    return {"runs": rows, "summary": summary(rows)}


if __name__ == "__main__":
    main()
