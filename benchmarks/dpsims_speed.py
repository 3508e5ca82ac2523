"""DP-SIMS-style against OASIS: one training iteration and generator inference, full widths, the same resolution,
with the frozen backbone's share.

Both models are built at their full published/official widths (dp-sims: ConvNeXt-L backbone with random weights,
same cost as pretrained ones) on ADE20K's 151 classes at a small size, timed in the same process, round-robin. One
iteration = the G step (G, D on the fakes with autograd through the backbone, and D on the reals for patch-nce)
then the D step (fake, real and LabelMix mix judged in one call, the frozen backbone under no_grad), each with its
backward and Adam step, as the trainer runs them. The backbone's share is timed with forward hooks (its forward
passes) and by timing the backward through it alone on the G step's fakes.

    OMP_NUM_THREADS=2 nice -n 10 python benchmarks/dpsims_speed.py --size 64 64 --batch 2 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch

from gensynth.build import build_discriminator, build_generator, build_method, resolve_parts
from gensynth.config import resolve
from gensynth.interfaces import Condition, one_hot
from gensynth.train.param_groups import param_groups

RESULTS = Path(__file__).resolve().parent / "results" / "dpsims_speed.json"

MODELS = {
    "oasis": {"model.preset": "oasis"},
    "dp-sims": {"model.preset": "dp-sims", "model.discriminator_options.dp-sims.pretrained": False},
    "dp-sims, no patch-nce/diversity": {"model.preset": "dp-sims",
                                        "model.discriminator_options.dp-sims.pretrained": False,
                                        "model.losses": {"patch-nce": 0, "diversity": 0}},
}


class Timer:
    """Wall time spent inside a module's forward calls (forward hooks)."""

    def __init__(self, module: torch.nn.Module):
        self.total = 0.0
        self._start = 0.0
        module.register_forward_pre_hook(lambda *_: self._begin())
        module.register_forward_hook(lambda *_: self._end())

    def _begin(self):
        self._start = time.perf_counter()

    def _end(self):
        self.total += time.perf_counter() - self._start


def build(name: str, size, batch: int):
    cfg, _ = resolve({"data.name": "ade20k", "data.size": list(size), **MODELS[name]})
    parts = resolve_parts(cfg)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        G, D = build_generator(parts), build_discriminator(parts)
    method = build_method(parts)
    opt_g = torch.optim.Adam(param_groups(G, 1e-4), lr=1e-4, betas=(0.0, 0.999))
    opt_d = torch.optim.Adam(param_groups(D, 4e-4), lr=4e-4, betas=(0.0, 0.999))
    n = parts.num_classes
    ids = torch.randint(0, n, (batch, *size))
    cond = Condition(one_hot(ids, n), ids=ids)
    real = torch.rand(batch, 3, *size) * 2 - 1
    trainable_d = [p for p in D.parameters() if p.requires_grad]
    timer = Timer(D.encoder) if hasattr(D, "encoder") else None

    def iteration():
        for p in trainable_d:
            p.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        sum(method.g_losses(G, D, real, cond).values()).backward()
        for p in trainable_d:
            p.requires_grad_(True)
        opt_g.step()
        opt_d.zero_grad(set_to_none=True)
        sum(method.d_losses(G, D, real, cond).values()).backward()
        opt_d.step()

    info = {"G parameters": sum(p.numel() for p in G.parameters()),
            "D parameters": sum(p.numel() for p in D.parameters()),
            "D trainable": sum(p.numel() for p in trainable_d),
            "Adam state MB (G+D)": 8 * (sum(p.numel() for g in opt_g.param_groups for p in g["params"])
                                        + sum(p.numel() for g in opt_d.param_groups for p in g["params"])) / 2 ** 20}
    return G, D, iteration, cond, timer, info


def backbone_backward_time(D, size, batch: int, repeats: int) -> float:
    """Seconds of one forward+backward through the frozen backbone alone, to the image (what the G step pays)."""
    times = []
    for _ in range(repeats):
        x = (torch.rand(batch, 3, *size) * 2 - 1).requires_grad_(True)
        t = time.perf_counter()
        feats = D.encoder(D.normalise(x))
        sum(f.float().mean() for f in feats).backward()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def saved_mb(D, size, batch: int, needs_grad: bool) -> float:
    """MB of tensors autograd keeps for backward during one D call on ``batch`` images (the D step judges
    3 x batch: fake, real, LabelMix mix); ``needs_grad`` forces the graph through the frozen backbone."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    x = torch.rand(batch, 3, *size) * 2 - 1
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        D(x.requires_grad_(needs_grad))
    return total[0] / 2 ** 20


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs=2, default=[64, 64])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = tuple(args.size)
    built = {name: build(name, size, args.batch) for name in MODELS}
    for _, _, it, _, _, _ in built.values():  # warm-up
        it()
    times = {name: [] for name in MODELS}
    backbone = {name: [] for name in MODELS}
    for _ in range(args.repeats):  # round-robin
        for name, (_, _, it, _, timer, _) in built.items():
            before = timer.total if timer else 0.0
            t = time.perf_counter()
            it()
            times[name].append(time.perf_counter() - t)
            if timer:
                backbone[name].append(timer.total - before)
    infer = {}
    for name, (G, _, _, cond, _, _) in built.items():
        G.eval()
        with torch.inference_mode():
            G(cond)
            t = time.perf_counter()
            for _ in range(args.repeats):
                G(cond)
            infer[name] = args.batch * args.repeats / (time.perf_counter() - t)
    ref = statistics.median(times["oasis"])
    rows = []
    for name, (G, D, _, _, _, info) in built.items():
        it = statistics.median(times[name])
        row = {"model": name, "iteration s": it, "vs oasis": it / ref, "inference img/s": infer[name],
               "inference vs oasis": infer[name] / infer["oasis"], **info}
        if backbone[name]:
            row["backbone forward s"] = statistics.median(backbone[name])
            row["backbone backward (G step) s"] = backbone_backward_time(D, size, args.batch, args.repeats)
            row["backbone share"] = (row["backbone forward s"] + row["backbone backward (G step) s"]) / it
            row["D-step autograd MB, frozen part under no_grad"] = saved_mb(D, size, 3 * args.batch, False)
            row["D-step autograd MB, graph forced through it"] = saved_mb(D, size, 3 * args.batch, True)
        rows.append(row)
    for r in rows:
        print(" | ".join(f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}" for k, v in r.items()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"size": size, "batch": args.batch, "repeats": args.repeats,
                                   "threads": torch.get_num_threads(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
