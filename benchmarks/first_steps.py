"""How a discriminator dies, step by step: the figures behind gensynth.train.stable_start (issue 26).

Runs the real trainer's steps one at a time on one configuration and prints, after every step:

* the step's losses;
* ``|logit|``: the largest absolute logit of D on the step's real images (eval mode, the u, v D holds now);
* ``spread``: the standard deviation of those logits over pixels and images (the health monitor's figure);
* ``sn lag``: over D's spectral-norm layers, the largest ratio true sigma / the sigma its u, v give (1 = exact);
* ``D step / lr``: the mean absolute change of D's parameters in the step, over D's learning rate (~1 for Adam's
  usual steps; ~1e-4 means Adam's second moment holds a spike and D is frozen).

    OMP_NUM_THREADS=1 python benchmarks/first_steps.py --recipe official            # Cityscapes 64x128, batch 2
    OMP_NUM_THREADS=1 python benchmarks/first_steps.py --recipe stable --steps 60
    OMP_NUM_THREADS=1 python benchmarks/first_steps.py --recipe stable --set trainer.stable_start_clip=1e9  # no clip

The default configuration is the one of ../shared/reference/dying-discriminator.md: the genuine Cityscapes
samples of ../shared/testdata-real at 64x128, full widths, batch 2.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CITYSCAPES = HERE.parent.parent / "shared" / "testdata-real" / "cityscapes"
RECIPES = {"official": {"trainer.stable_start": False, "trainer.ema_warmup": False}, "stable": {}}


def sn_lag(module: torch.nn.Module) -> float:
    """Largest true sigma / estimated sigma over the spectral-norm layers of ``module``."""
    from gensynth.train.stable_start import spectral_layers

    worst = 1.0
    for layer in spectral_layers(module):
        w = layer.weight_orig.detach().reshape(layer.weight_orig.shape[0], -1)
        est = float(torch.dot(layer.weight_u, torch.mv(w, layer.weight_v)))
        worst = max(worst, float(torch.linalg.matrix_norm(w, ord=2)) / max(est, 1e-30))
    return worst


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    from gensynth.config import parse_set, resolve
    from gensynth.train.health import output_spread
    from gensynth.train.trainer import Trainer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", choices=sorted(RECIPES), default="official")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=str(CITYSCAPES))
    p.add_argument("--set", dest="sets", action="append", default=[], help="more dotted key=value")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    keys = {"model.preset": "oasis", "data.name": "cityscapes", "data.root": a.data_root, "data.size": [64, 128],
            "trainer.batch_size": 2, "trainer.steps": a.steps, "trainer.seed": a.seed, "eval.every": 0,
            "data.num_workers": 0, "trainer.run_dir": tempfile.mkdtemp(prefix="first-steps-"),
            **RECIPES[a.recipe], **parse_set(a.sets)}
    cfg, prov = resolve(keys)
    tr = Trainer(cfg, prov, resume=False)
    tr._setup()
    tr._sums, tr._bad, tr._last_losses, tr.health_findings = {}, {}, {}, []
    it = tr._train_iter()
    rows = []
    print(f"{a.recipe}: {' '.join(f'{k}={v}' for k, v in keys.items() if k.startswith(('trainer.st', 'optim')))}")
    for step in range(1, a.steps + 1):
        micros = tr._next_micro_batches(it)
        before = [q.detach().clone() for q in tr.D.parameters()]
        lr = tr.opt_d.param_groups[0]["lr"]
        tr._train_step(micros)
        moved = sum(float((q.detach() - b).abs().sum()) for q, b in zip(tr.D.parameters(), before))
        moved /= sum(b.numel() for b in before) * lr
        real, cond = micros[0]
        with torch.no_grad():
            tr.D.eval()
            logits = tr.D(real, cond).logits
            tr.D.train()
        row = {"step": step, **{k: float(v) for k, v in tr._last_losses.items()},
               "max_abs_logit": float(logits.abs().max()), "spread": float(output_spread(logits)),
               "sn_lag": sn_lag(tr.D), "d_step_over_lr": moved}
        rows.append(row)
        print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    return rows


if __name__ == "__main__":
    main()
