"""Generator inference speed: images per second at batch 1 and 16, fp32 and bf16, full widths, against references.

The generator is built in eval mode (batch-norm running statistics, no power iteration), as ``gensynth generate``
runs it, and timed under ``torch.inference_mode``; the generators of a configuration are timed round-robin. References in the same process: the official OASIS generator
(``--official PATH``, its ``netEMA`` in eval mode) and gensynth's generator computing spectral norm as torch's
hook does (``sn=weight``) on the dense label map, the official computation.

    OMP_NUM_THREADS=2 python benchmarks/inference.py                               # CPU: 64x64 / 64x128
    python benchmarks/inference.py --official ~/OASIS --configs ade20k-64x64
    python benchmarks/inference.py --device cuda --configs ade20k-256x256 cityscapes-256x512
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_rates import machine_info  # noqa: E402
from train_step import CONFIGS, CPU_CONFIGS, _overrides, _sync  # noqa: E402

from gensynth.build import build_generator, resolve_parts  # noqa: E402
from gensynth.config import resolve  # noqa: E402
from gensynth.interfaces import Condition, one_hot  # noqa: E402
from gensynth.nn.conv import set_input_layout  # noqa: E402
from gensynth.nn.spectral import SpectralConv2d  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "inference.json"


def gensynth_generator(preset: str, config: str, sn: str, device: torch.device, factored: bool = True,
                       layout: str = "by_shape"):
    data, size = CONFIGS[config]
    cfg, _ = resolve(_overrides(preset, data, size, 1))
    parts = resolve_parts(cfg)
    torch.manual_seed(0)
    G = build_generator(parts).to(device)
    for m in G.modules():
        if isinstance(m, SpectralConv2d):
            m.scale = sn
    if hasattr(G, "factored_labels"):
        G.factored_labels = factored
    set_input_layout(G, layout)
    G.train()
    with torch.no_grad():  # a few training-mode calls so that BN statistics and u, v are not at their init
        for _ in range(2):
            G(Condition(one_hot(torch.randint(0, parts.num_classes, (2, *size), device=device), parts.num_classes)))
    return G.eval(), parts.num_classes, size


def official_generator(path: str, preset: str, config: str, device: torch.device):
    from official_oasis import OfficialRun, official_options

    data, size = CONFIGS[config]
    cfg, _ = resolve(_overrides(preset, data, size, 1))
    parts = resolve_parts(cfg)
    opt = official_options(parts.num_classes, *size, 1, dontcare=parts.dataset.dontcare is not None, labelmix=10.0,
                           ema_decay=0.9999, lr_g=1e-4, lr_d=4e-4, gpu=device.type == "cuda")
    run = OfficialRun(path, opt, device)
    return run.model.netEMA.eval(), parts.num_classes, size


def time_generators(gens: dict, num_classes: int, size, batch: int, precision: str, device,
                    repeats: int) -> dict[str, float]:
    """{name: median seconds per batch}, the generators timed round-robin (load drift hits all alike)."""
    ids = torch.randint(0, num_classes, (batch, *size), device=device)
    labels = one_hot(ids, num_classes)  # (B, N, H, W)
    conds = {}
    for name, G in gens.items():
        # gensynth's generators get the ids as the data loader and the generate API give them; the official a tensor
        conds[name] = labels if getattr(G, "__module__", "").startswith("models.") else Condition(labels, ids=ids)
    times: dict[str, list[float]] = {name: [] for name in gens}
    ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), ctx:
        for name, G in gens.items():
            G(conds[name])
        for _ in range(repeats):
            for name, G in gens.items():
                _sync(device)
                t = time.perf_counter()
                G(conds[name])
                _sync(device)
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=None, choices=list(CONFIGS))
    ap.add_argument("--presets", nargs="+", default=["oasis", "spade"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--official", default=None, help="path of an official OASIS checkout (OASIS preset only)")
    ap.add_argument("--out", default=str(RESULTS), help="JSON output ('-' = do not write)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    configs = args.configs or (CPU_CONFIGS if device.type == "cpu" else list(CONFIGS))
    rows = []
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for preset in args.presets:
        for config in configs:
            builders = [("gensynth", lambda: gensynth_generator(preset, config, "auto", device)),
                        ("gensynth, official settings",
                         lambda: gensynth_generator(preset, config, "weight", device, factored=False,
                                                    layout="keep"))]
            if args.official and preset == "oasis":
                builders.insert(0, ("official code", lambda: official_generator(args.official, preset, config,
                                                                                device)))
            gens = {}
            for name, build in builders:
                gens[name], n, size = build()
            for batch in args.batches:
                for precision in ("fp32", "bf16"):
                    secs = time_generators(gens, n, size, batch, precision, device, args.repeats)
                    for name, sec in secs.items():
                        rows.append({"preset": preset, "config": config, "generator": name, "batch": batch,
                                     "precision": precision, "seconds": sec, "images_per_s": batch / sec})
                        print(f"{preset:>6} {config:>18} {name:>28} batch {batch:>3} {precision}: "
                              f"{batch / sec:8.2f} img/s ({sec:.3f} s/batch)", flush=True)
            del gens
    for r in rows:  # ratio against the first generator of the same configuration, batch and precision
        ref = next(x for x in rows if (x["preset"], x["config"], x["batch"], x["precision"]) ==
                   (r["preset"], r["config"], r["batch"], r["precision"]))
        r["speedup_vs_reference"] = ref["seconds"] / r["seconds"]
        r["reference"] = ref["generator"]
    print("\n| preset | config | generator | batch | precision | img/s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['config']} | {r['generator']} | {r['batch']} | {r['precision']} | "
              f"{r['images_per_s']:.2f} | {r['speedup_vs_reference']:.2f} |")
    report = {"machine": machine_info(device),
              "command": "python benchmarks/inference.py " + " ".join(argv), "rows": rows}
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
