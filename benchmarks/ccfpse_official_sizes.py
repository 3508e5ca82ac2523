"""CC-FPSE at the official sizes on CPU, measured the way the facts sheet measured the official code.

The official figures (wave2-models-and-demos.md §1.9; the official classes on 2 vCPU, fp32, batch 1):

* generator forward in eval mode: ADE20K 256x256 23.2 s (875 GFLOP), Cityscapes 256x512 37.3 s (1,477 GFLOP);
* G + D forward + backward in train mode, no VGG, no encoder, no optimiser: ADE20K 66 s, peak RSS 4.57 GB
  (0.84 GB after building the models), Cityscapes 90 s, peak RSS 7.37 GB.

This script runs gensynth's ``cc-fpse`` generator (with its VAE head, z from the prior) and ``fpse`` discriminator
the same way: the forward under ``torch.inference_mode`` with FLOPs from ``torch.utils.flop_counter`` (conv and
linear only, as the facts sheet; the per-pixel depthwise products are not counted there either), then, in a fresh
child process, one train-mode step (G forward, D on [fake ; real], hinge G loss + feature matching, backward) with
its time and the child's peak resident set size (VmHWM), total and after building the models.

    nice -n 10 python benchmarks/ccfpse_official_sizes.py [--configs ade20k cityscapes] [--out results/x.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import _peak_rss_mb, _rss_mb  # noqa: E402

from gensynth.interfaces import Condition, one_hot  # noqa: E402
from gensynth_ccfpse.discriminator import build_fpse  # noqa: E402
from gensynth_ccfpse.generator import build_cc_fpse_generator  # noqa: E402
from gensynth_ccfpse.losses import feature_matching_mean  # noqa: E402

#: name -> (classes, instance edges, (H, W), mode, official G forward s, GFLOP, official train step s, peak GB)
CONFIGS = {
    "ade20k": (151, False, (256, 256), "normal", 23.2, 875, 66.0, 4.57),
    "cityscapes": (35, True, (256, 512), "more", 37.3, 1477, 90.0, 7.37),
}


def build(config: str):
    n, edges, size, mode, *_ = CONFIGS[config]
    torch.manual_seed(0)
    g = build_cc_fpse_generator(n, use_instance_edges=edges, num_upsampling_layers=mode, use_vae=True,
                                size=list(size))
    d = build_fpse(n, use_instance_edges=edges)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, n, (1, size[0] // 16, size[1] // 16), generator=gen)
    ids = ids.repeat_interleave(16, 1).repeat_interleave(16, 2)
    inst = torch.randint(0, 4, (1, 1, *size), generator=gen).float() if edges else None
    cond = Condition(one_hot(ids, n), inst, ids=ids)
    real = torch.rand(1, 3, *size, generator=gen) * 2 - 1
    return g, d, cond, real


def forward_eval(config: str) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    g, _, cond, _ = build(config)
    g.eval()
    z = torch.randn(1, 256, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            g(cond, z)
        t0 = time.perf_counter()
        g(cond, z)
        seconds = time.perf_counter() - t0
    return {"g_forward_gflop": counter.get_total_flops() / 1e9, "g_forward_s": seconds}


def train_step_child(config: str) -> None:
    base = _rss_mb()
    g, d, cond, real = build(config)
    g.train(), d.train()
    built = _rss_mb()
    t0 = time.perf_counter()
    fake = g(cond).image
    out = d(torch.cat([fake, real]), Condition(torch.cat([cond.labels] * 2),
                                               None if cond.instance_edges is None else
                                               torch.cat([cond.instance_edges] * 2)))
    d_fake, d_real = out.split([1, 1])
    loss = -sum(x.mean() for x in d_fake.logits) / 3 + 20 * feature_matching_mean(d_fake.features, d_real.features)
    loss.backward()
    seconds = time.perf_counter() - t0
    print(f"RESULT {json.dumps({'train_step_s': seconds, 'peak_rss_gb': _peak_rss_mb() / 1024, 'base_gb': base / 1024, 'after_build_gb': built / 1024})}")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ccfpse_official_sizes.json"))
    ap.add_argument("--_child", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a._child:
        train_step_child(a._child)
        return []
    rows = []
    for config in a.configs:
        n, edges, size, mode, off_fwd, off_gflop, off_step, off_peak = CONFIGS[config]
        row = {"config": config, "size": size, "threads": a.threads, **forward_eval(config)}
        out = subprocess.run([sys.executable, __file__, "--_child", config, "--threads", str(a.threads)],
                             capture_output=True, text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"  (train-step child failed: {out.stderr.strip().splitlines()[-3:]})")
        else:
            row.update(json.loads(line[len("RESULT "):]))
        row.update({"official_g_forward_s": off_fwd, "official_g_forward_gflop": off_gflop,
                    "official_train_step_s": off_step, "official_peak_rss_gb": off_peak})
        rows.append(row)
        print(f"{config} {size[0]}x{size[1]}: G forward {row['g_forward_gflop']:.0f} GFLOP (official {off_gflop}), "
              f"{row['g_forward_s']:.1f} s (official {off_fwd} s); G+D train step "
              f"{row.get('train_step_s', float('nan')):.1f} s (official {off_step} s), peak RSS "
              f"{row.get('peak_rss_gb', float('nan')):.2f} GB (official {off_peak} GB; "
              f"{row.get('after_build_gb', float('nan')):.2f} GB after build)", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1))
    print(f"wrote {a.out}")
    return rows


if __name__ == "__main__":
    main()
