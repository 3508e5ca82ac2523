"""Learning evidence for the quick start (``gensynth train --model oasis --data demo``).

Trains the quick-start configuration with the real trainer (``run_training``), timed, then measures at
initialisation and at every saved checkpoint:

* ``d_miou``: the discriminator used as a segmenter on REAL validation images of the demo dataset
  (argmax over its channels 1..N, i.e. the N real classes; channel 0 = "fake" is left out), mean IoU against
  the ground-truth labels over the real classes (the don't-care class 0 ignored);
* ``colour_err``: per-class mean-colour error of the EMA generator's images: for every class, the mean RGB (0..255)
  of its pixels in generated images (from the validation label maps) vs in the real images, Euclidean distance,
  averaged over the classes present; plus ``color_emd`` / ``texture_chi2`` from ``gensynth.eval.colour_texture``;
* the generator's and discriminator's losses from ``metrics.jsonl`` (mean over the log lines up to the checkpoint).

    OMP_NUM_THREADS=2 python benchmarks/learning_demo.py                 # the quick start as is (300 steps)
    python benchmarks/learning_demo.py --set trainer.steps=100 --out -    # shorter, print only

Writes benchmarks/results/learning_demo.json (``--out``). ``tests/test_learning.py`` reuses the measurement
functions of this file.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gensynth.build import Parts, build_discriminator, build_generator, resolve_parts
from gensynth.config import RunConfig, parse_set, resolve
from gensynth.eval.colour_texture import ClassHistograms, compare
from gensynth.eval.miou import ConfusionMatrix, IGNORE, apply_mapping, eval_id_mapping
from gensynth.train.state import seed_everything

RESULTS = Path(__file__).resolve().parent / "results" / "learning_demo.json"


@dataclass
class Measurement:
    """Learning figures of one (generator, discriminator) pair on the validation split."""

    d_miou: float  # discriminator as segmenter of real images, mIoU over the real classes
    d_pixel_acc: float
    colour_err: float  # per-class mean RGB error (0..255 units), generated vs real
    color_emd: float  # gensynth.eval.colour_texture: LAB histogram EMD per class
    texture_chi2: float  # LBP histogram chi-squared per class

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def val_batches(cfg: RunConfig, parts: Parts, limit: int, batch_size: int = 8) -> list:
    """The first ``limit`` validation samples as (real (B,3,H,W), Condition, label ids (B,H,W)) on the CPU."""
    from gensynth.data.loader import eval_batches, to_condition

    out = []
    for batch in eval_batches(cfg.data, parts.dataset, batch_size=batch_size, limit=limit, num_workers=0):
        real, cond = to_condition(batch, parts.num_classes, "cpu", dontcare=parts.dataset.dontcare)
        out.append((real, cond, batch.label.long()))
    return out


@torch.no_grad()
def discriminator_miou(D: nn.Module, batches: list, parts: Parts) -> tuple[float, float]:
    """(mIoU, pixel accuracy) of ``argmax(D(real).logits[:, 1:])`` vs the labels, don't-care ignored.

    D logits: (B, N+1, H, W), channel 0 = fake, channel c+1 = class c."""
    table, n_eval = eval_id_mapping(parts.num_classes, None, parts.dontcare_index)
    cm = ConfusionMatrix(n_eval, ignore=IGNORE)
    was = D.training
    D.eval()
    for real, cond, ids in batches:
        logits = D(real, cond).logits
        pred = logits[:, 1:].argmax(dim=1)
        cm.update(apply_mapping(pred, table), apply_mapping(ids, table))
    D.train(was)
    return cm.miou(), cm.pixel_accuracy()


@torch.no_grad()
def generate(G: nn.Module, batches: list, seed: int = 0) -> list[torch.Tensor]:
    """Images (B, 3, H, W) in [-1, 1] of G (eval mode) for every batch's label maps, fixed noise."""
    was = G.training
    G.eval()
    torch.manual_seed(seed)
    fakes = [G(cond).image.float().clamp(-1, 1) for _, cond, _ in batches]
    G.train(was)
    return fakes


def class_mean_colours(images: list[torch.Tensor], labels: list[torch.Tensor], num_classes: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_classes, 3) mean RGB in 0..255 of each class's pixels over all images, and (num_classes,) pixel counts."""
    sums = torch.zeros(num_classes, 3, dtype=torch.float64)
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for img, ids in zip(images, labels):
        rgb = ((img.double() + 1) * 127.5).permute(1, 0, 2, 3).reshape(3, -1)  # (3, B*H*W)
        flat = ids.reshape(-1)
        sums.index_add_(0, flat, rgb.t())
        counts += torch.bincount(flat, minlength=num_classes).double()
    return sums / counts.clamp(min=1).unsqueeze(1), counts


def colour_error(fakes: list[torch.Tensor], batches: list, parts: Parts) -> float:
    """Mean over the real classes present of ||mean RGB(fake pixels of c) - mean RGB(real pixels of c)||."""
    labels = [ids for _, _, ids in batches]
    real_mean, counts = class_mean_colours([r for r, _, _ in batches], labels, parts.num_classes)
    fake_mean, _ = class_mean_colours(fakes, labels, parts.num_classes)
    keep = counts > 0
    if parts.dontcare_index is not None:
        keep[parts.dontcare_index] = False
    return float((real_mean - fake_mean)[keep].norm(dim=1).mean())


def measure(G: nn.Module, D: nn.Module, batches: list, parts: Parts) -> Measurement:
    """All learning figures of a generator/discriminator pair on the given validation batches."""
    miou, acc = discriminator_miou(D, batches, parts)
    fakes = generate(G, batches)
    real_h = ClassHistograms(parts.num_classes, ignore=parts.dontcare_index)
    fake_h = ClassHistograms(parts.num_classes, ignore=parts.dontcare_index)
    for (real, _, ids), fake in zip(batches, fakes):
        real_h.update(real, ids)
        fake_h.update(fake, ids)
    ct = compare(real_h, fake_h, min_pixels=16)
    return Measurement(miou, acc, colour_error(fakes, batches, parts), ct["color_emd"], ct["texture_chi2"])


def initial_models(cfg: RunConfig) -> tuple[nn.Module, nn.Module, Parts]:
    """G and D exactly as the trainer builds them before step 1 (same seed, same order)."""
    parts = resolve_parts(cfg)
    seed_everything(cfg.trainer.seed)
    G = build_generator(parts)
    D = build_discriminator(parts)
    return G, D, parts


def loss_means(run_dir: Path, upto: int, since: int = 0) -> dict[str, float]:
    """Mean of each logged loss over the train log lines with since < step <= upto."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("kind") == "train" and since < r["step"] <= upto]
    keys = [k for k in ("G_adv", "D_fake", "D_real", "labelmix") if any(k in r for r in rows)]
    return {k: sum(r[k] for r in rows if k in r) / max(1, sum(k in r for r in rows)) for k in keys}


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    return sorted(p for p in (run_dir / "checkpoints").glob("step_*") if p.is_dir())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", action="append", default=[], help="extra config section.key=value (as gensynth train)")
    ap.add_argument("--run-dir", default=None, help="default: a temporary directory")
    ap.add_argument("--val-samples", type=int, default=64, help="validation images to measure on")
    ap.add_argument("--out", default=str(RESULTS), help="JSON output ('-' = do not write)")
    args = ap.parse_args(argv)

    from rich.console import Console

    from gensynth.api import load_model
    from gensynth.train.trainer import run_training

    tmp = tempfile.TemporaryDirectory(prefix="gensynth-learning-")
    run_dir = Path(args.run_dir or Path(tmp.name) / "run")
    user = {"model.preset": "oasis", "data.name": "demo", "trainer.run_dir": str(run_dir), **parse_set(args.set)}
    # keep every checkpoint of the run so that each can be measured
    user.setdefault("trainer.keep_last", 100)
    cfg, provenance = resolve(user)
    console = Console(stderr=True)
    console.print(f"training the quick start: {cfg.trainer.steps} steps, batch {cfg.trainer.batch_size}, "
                  f"{torch.get_num_threads()} threads -> {run_dir}")
    t0 = time.perf_counter()
    result = run_training(cfg, provenance, console=console, resume=False)
    train_s = time.perf_counter() - t0

    G0, D0, parts = initial_models(cfg)
    batches = val_batches(cfg, parts, args.val_samples)
    rows = [{"step": 0, **measure(G0, D0, batches, parts).as_dict()}]
    prev = 0
    for ck in checkpoint_dirs(run_dir):
        m = load_model(ck, ema=True, with_discriminator=True)
        step = int(m.checkpoint.meta["step"])
        row = {"step": step, **measure(m.generator, m.discriminator, batches, parts).as_dict()}
        row.update({f"loss/{k}": v for k, v in loss_means(run_dir, step, prev).items()})
        rows.append(row)
        prev = step

    cols = ["step", "d_miou", "d_pixel_acc", "colour_err", "color_emd", "texture_chi2",
            "loss/G_adv", "loss/D_fake", "loss/D_real", "loss/labelmix"]
    print(f"quick start: {result.step} steps in {train_s:.0f} s ({train_s / max(result.step, 1):.2f} s/step), "
          f"{os.cpu_count()} cores, torch {torch.__version__}; measured on {args.val_samples} real val images")
    print(" ".join(f"{c:>13}" for c in cols))
    for r in rows:
        print(" ".join(f"{r[c]:>13.4g}" if c in r else f"{'-':>13}" for c in cols))
    report = {
        "command": "gensynth train --model oasis --data demo" + "".join(f" --set {s}" for s in args.set),
        "machine": {"cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "device": "cpu"},
        "steps": result.step, "batch_size": cfg.trainer.batch_size, "size": list(parts.dataset.default_size
                                                                                 if cfg.data.size is None else cfg.data.size),
        "train_seconds": round(train_s, 1), "val_samples": args.val_samples,
        "checkpoints": rows,
    }
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    tmp.cleanup()
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
