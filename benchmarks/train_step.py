"""Time and peak memory of one OASIS training step (G step + D step + both Adam steps), EMA update, BN refresh.

The OASIS preset ("oasis" generator + "oasis-unet" + n+1 + LabelMix) is built through gensynth.build and trained
with gensynth.method.AdversarialMethod, the same step order as the trainer. Ratios are against a reference run in
the same process:

* ``official-order``: D's parameters keep requires_grad during the G step (the official code), vs ours where D is
  frozen in the G step (no weight gradients of D are computed there);
* ``fp32`` is the reference of ``bf16`` autocast.

    OMP_NUM_THREADS=1 python benchmarks/train_step.py                       # demo 64x64 and quarter-width 128x256
    python benchmarks/train_step.py --sizes 64x64 --repeats 3 --out -       # quick look, no JSON

Peak memory: on CUDA torch.cuda.max_memory_allocated; on CPU the peak of tracemalloc-visible Python allocations is
useless for tensors, so the CPU figure is the growth of the process's max RSS (resource.getrusage) during the
measured steps (monotone: later configurations only show what they add beyond earlier peaks) -- read it as an
upper-bound indication, not an exact per-configuration figure. Timings are never asserted by tests.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gensynth.build import build_discriminator, build_generator, build_method, resolve_parts
from gensynth.config import resolve
from gensynth.interfaces import Condition, one_hot
from gensynth.train.ema import EMA, refresh_bn_stats
from gensynth.train.distributed import DistInfo

RESULTS = Path(__file__).resolve().parent / "results" / "train_step.json"

#: (label, H, W, config overrides): the demo quick-start model, and a quarter-width official model at 128x256
SIZES = {
    "64x64": {},
    "128x256": {"model.generator_options.channels": 16, "model.generator_options.num_res_blocks": 6,
                "model.discriminator_options.num_res_blocks": 6, "model.discriminator_options.width": 0.25,
                "model.generator_options.spade_hidden": 32, "model.generator_options.z_dim": 64},
}


@dataclass
class StepConfig:
    """One measured configuration."""

    size: str
    batch: int
    precision: str  # fp32 | bf16
    freeze_d: bool  # ours: D frozen in the G step; False = official order


def _rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2 ** 20


class Bench:
    """Builds the OASIS parts once per size and times steps on random label maps / images."""

    def __init__(self, size: str, batch: int, device: torch.device):
        h, w = (int(v) for v in size.split("x"))
        cfg, _ = resolve({"model.preset": "oasis", "data.name": "demo", "data.size": [h, w], **SIZES.get(size, {})})
        self.cfg, self.parts, self.device = cfg, resolve_parts(cfg), device
        torch.manual_seed(0)
        self.G = build_generator(self.parts).to(device)
        self.D = build_discriminator(self.parts).to(device)
        self.method = build_method(self.parts)
        oc = cfg.optim
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=oc.lr_g, betas=(oc.beta1, oc.beta2))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=oc.lr_d, betas=(oc.beta1, oc.beta2))
        self.ema = EMA(self.G, 0.999)
        n = self.parts.num_classes
        ids = torch.randint(0, n, (batch, h, w), device=device)
        self.cond = Condition(one_hot(ids, n))  # labels (B, N, H, W)
        self.real = torch.rand(batch, 3, h, w, device=device) * 2 - 1  # (B, 3, H, W)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self, precision: str, freeze_d: bool) -> None:
        """One G step then one D step on the same batch, with optimiser steps (as the trainer)."""
        dtype = torch.bfloat16 if precision == "bf16" else None
        ctx = torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)
        if freeze_d:
            self.D.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        with ctx:
            losses = self.method.g_losses(self.G, self.D, self.real, self.cond)
        sum(losses.values()).float().backward()
        self.D.requires_grad_(True)
        self.opt_g.step()
        self.opt_d.zero_grad(set_to_none=True)  # also drops D gradients the official order computed in the G step
        with ctx:
            losses = self.method.d_losses(self.G, self.D, self.real, self.cond)
        sum(losses.values()).float().backward()
        self.opt_d.step()

    def time_it(self, fn, repeats: int, warmup: int = 1) -> tuple[float, float]:
        """(median seconds per call, max-RSS growth in MB or CUDA peak MB)."""
        for _ in range(warmup):
            fn()
        self._sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        rss0 = _rss_mb()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            self._sync()
            times.append(time.perf_counter() - t)
        peak = torch.cuda.max_memory_allocated(self.device) / 2 ** 20 if self.device.type == "cuda" else _rss_mb() - rss0
        return sorted(times)[len(times) // 2], peak

    def bn_refresh(self, batches: int) -> None:
        """Re-estimate the EMA generator's BN statistics on ``batches`` forward passes (single process)."""
        refresh_bn_stats(self.ema.module, (self.cond for _ in range(batches)), DistInfo(device=self.device))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), help="HxW (64x64 = demo model, 128x256 = quarter width)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bn-batches", type=int, default=10, help="batches of the BN refresh (demo preset: 10)")
    ap.add_argument("--out", default=str(RESULTS), help="JSON output ('-' = do not write)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for size in args.sizes:
        b = Bench(size, args.batch, device)
        ref = None
        for precision in ("fp32", "bf16"):
            for freeze_d in (False, True):
                sec, mem = b.time_it(lambda: b.step(precision, freeze_d), args.repeats)
                row = {"size": size, "batch": args.batch, "what": "train step", "precision": precision,
                       "order": "ours (D frozen in G step)" if freeze_d else "official (D requires_grad in G step)",
                       "seconds": sec, "peak_mb": mem}
                if precision == "fp32" and not freeze_d:
                    ref = sec
                row["ratio_vs_fp32_official"] = sec / ref
                rows.append(row)
        fp32_ours = next(r["seconds"] for r in rows if r["size"] == size and r["precision"] == "fp32"
                         and r["order"].startswith("ours"))
        for r in rows:
            if r["size"] == size and r["precision"] == "bf16" and r["order"].startswith("ours"):
                r["ratio_bf16_vs_fp32"] = r["seconds"] / fp32_ours
        sec, mem = b.time_it(lambda: b.ema.update(b.G), args.repeats)
        rows.append({"size": size, "batch": args.batch, "what": "EMA update", "precision": "fp32", "order": "-",
                     "seconds": sec, "peak_mb": mem, "ratio_vs_fp32_official": sec / ref})
        sec, mem = b.time_it(lambda: b.bn_refresh(args.bn_batches), max(1, args.repeats // 2))
        rows.append({"size": size, "batch": args.batch, "what": f"BN refresh ({args.bn_batches} batches)",
                     "precision": "fp32", "order": "-", "seconds": sec, "peak_mb": mem,
                     "ratio_vs_fp32_official": sec / ref})
        g = sum(p.numel() for p in b.G.parameters())
        d = sum(p.numel() for p in b.D.parameters())
        print(f"{size}: G {g / 1e6:.2f}M params, D {d / 1e6:.3f}M params")
    machine = {"cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
               "python": platform.python_version(), "device": str(device),
               "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    print(f"cores {machine['cpu_cores']}, torch threads {machine['torch_threads']}, torch {machine['torch']}, "
          f"device {device}, load average {machine['load_average']}")
    print(f"{'size':>8} {'what':>22} {'prec':>5} {'order':>38} {'s/step':>8} {'xref':>6} {'bf16/fp32':>9} {'peakMB':>7}")
    for r in rows:
        bf = f"{r['ratio_bf16_vs_fp32']:.2f}" if "ratio_bf16_vs_fp32" in r else "-"
        print(f"{r['size']:>8} {r['what']:>22} {r['precision']:>5} {r['order']:>38} {r['seconds']:>8.3f} "
              f"{r['ratio_vs_fp32_official']:>6.2f} {bf:>9} {r['peak_mb']:>7.0f}")
    report = {"machine": machine, "repeats": args.repeats, "rows": rows}
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
