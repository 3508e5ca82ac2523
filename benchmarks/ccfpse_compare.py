"""CC-FPSE against SPADE and OASIS at the same resolution and batch: one training iteration and inference, interleaved.

Each preset runs as ``benchmarks/train_step.py`` builds it (full widths, the preset's own losses: CC-FPSE with its
VAE encoder, KL, feature matching and VGG; SPADE with feature matching and VGG; OASIS with LabelMix; VGG with random
weights, which cost the same). The presets are timed round-robin, one iteration (then one batch of inference) each in
turn, so load drift on a shared machine hits them alike; the medians are printed with ratios to CC-FPSE. Peak memory
per preset comes from ``train_step.py`` (a child process per preset, ``results/train_step_ccfpse.json``).

    nice -n 10 env OMP_NUM_THREADS=2 python benchmarks/ccfpse_compare.py [--config ade20k-64x64] [--repeats 3]
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
from train_step import CONFIGS, make_run  # noqa: E402

PRESETS = ("cc-fpse", "spade", "oasis")
DEFAULT = "gensynth fp32 (default: + convolutions by shape)"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="ade20k-64x64", choices=list(CONFIGS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ccfpse_compare.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    runs = {p: make_run(p, a.config, a.batch, DEFAULT, torch.device("cpu"), None) for p in PRESETS}
    for run in runs.values():  # warm-up
        run.iteration()
    train = {p: [] for p in PRESETS}
    infer = {p: [] for p in PRESETS}
    for _ in range(a.repeats):
        for p, run in runs.items():
            t0 = time.perf_counter()
            run.iteration()
            train[p].append(time.perf_counter() - t0)
            run.G.eval()
            with torch.inference_mode():
                cond = run.cond
                t0 = time.perf_counter()
                run.G(cond)
                infer[p].append(time.perf_counter() - t0)
            run.G.train()
    rows = []
    ref_t, ref_i = statistics.median(train["cc-fpse"]), statistics.median(infer["cc-fpse"])
    for p in PRESETS:
        t, i = statistics.median(train[p]), statistics.median(infer[p])
        g, d = runs[p].params()
        rows.append({"preset": p, "config": a.config, "batch": a.batch, "train_s": t, "train_vs_ccfpse": t / ref_t,
                     "inference_s": i, "images_per_s": a.batch / i, "inference_vs_ccfpse": i / ref_i,
                     "g_params": g, "d_params": d, "losses": sorted(runs[p].parts.losses)})
        print(f"{p:8s} {a.config}: train {t:6.2f} s/iter ({t / ref_t:.2f}x cc-fpse), inference {a.batch / i:6.2f} "
              f"img/s ({i / ref_i:.2f}x cc-fpse time); G {g / 1e6:.2f}M, D {d / 1e6:.2f}M", flush=True)
    Path(a.out).write_text(json.dumps({"torch": torch.__version__, "threads": a.threads, "rows": rows}, indent=1))
    print(f"wrote {a.out}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
