"""Weight-bound convolutions: the library convolution against matrix products over unfolded columns.

For the 3x3 layers of OASIS at the CPU benchmark sizes (1024 channels on 2x4 to 8x16 maps, the discriminator's
512-channel layers at batch 3, ...), it times F.conv2d and gensynth.nn.gemm_conv.gemm_conv2d in the same process,
forward alone and backward (input and weight gradients) alone, and prints both with their ratio, the weight
elements per output element (the quantity gensynth.nn.gemm_conv.prefers_gemm compares with
GEMM_WEIGHT_PER_OUTPUT) and whether the rule picks the matrix products. Rounds alternate between the two paths.

    OMP_NUM_THREADS=1 THP_MEM_ALLOC_ENABLE=1 python benchmarks/weight_bound_convs.py --threads 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_rates import machine_info  # noqa: E402

from gensynth.nn.gemm_conv import GEMM_WEIGHT_PER_OUTPUT, gemm_conv2d, prefers_gemm  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "weight_bound_convs.json"

#: (batch, in, out, H, W): 3x3, stride 1, padding 1; OASIS generator (batch 1) and discriminator (batch 3 = the
#: merged D-step call) layers at 64x64 (ADE20K) and 64x128 (Cityscapes)
SHAPES = [
    (1, 1024, 1024, 2, 4), (1, 1024, 1024, 4, 8), (1, 1024, 1024, 8, 16), (1, 1024, 512, 8, 16),
    (1, 128, 1024, 2, 4), (1, 128, 1024, 4, 8), (1, 128, 1024, 8, 16),
    (3, 512, 512, 2, 4), (3, 512, 512, 4, 8), (3, 1024, 256, 4, 8), (1, 512, 512, 8, 16), (3, 256, 256, 8, 16),
    (1, 512, 256, 16, 32), (1, 1024, 1024, 2, 2), (1, 1024, 1024, 4, 4), (3, 512, 512, 2, 2),
]


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median_forward_backward_ms(paths: dict, inputs: tuple[torch.Tensor, ...], grad: torch.Tensor,
                               repeats: int) -> dict[str, float]:
    """{"<path>_forward": ms, "<path>_backward": ms}: medians over ``repeats`` rounds (after two warm-up rounds)
    that alternate between the ``paths`` (name -> function computing the output from ``inputs``); the forward is
    timed without autograd, the backward as the gradients of ``inputs`` for the output gradient ``grad``."""
    times = {f"{p}_{part}": [] for p in paths for part in ("forward", "backward")}
    for _ in range(repeats + 2):
        for name, fn in paths.items():
            with torch.no_grad():
                times[f"{name}_forward"].append(_time(fn))
            y = fn()
            times[f"{name}_backward"].append(_time(lambda: torch.autograd.grad(y, inputs, grad)))
    return {k: statistics.median(v[2:]) * 1e3 for k, v in times.items()}


def measure(shape: tuple[int, int, int, int, int], repeats: int, dtype: torch.dtype) -> dict:
    b, cin, cout, h, w = shape
    x = torch.randn(b, cin, h, w, dtype=dtype, requires_grad=True)
    weight = torch.randn(cout, cin, 3, 3, dtype=dtype, requires_grad=True)
    grad = torch.randn(b, cout, h, w, dtype=dtype)
    paths = {"conv": lambda: F.conv2d(x, weight, None, 1, 1),
             "gemm": lambda: gemm_conv2d(x, weight, None, (1, 1), (1, 1), (1, 1))}
    med = median_forward_backward_ms(paths, (x, weight), grad, repeats)
    numel_out = b * cout * h * w
    return {"shape": list(shape), "weight_per_output": weight.numel() / numel_out,
            "rule_picks_gemm": prefers_gemm(x, weight, numel_out),
            **{f"{k}_ms": round(v, 3) for k, v in med.items()},
            "forward_speedup": round(med["conv_forward"] / med["gemm_forward"], 3),
            "backward_speedup": round(med["conv_backward"] / med["gemm_backward"], 3)}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--out", default=str(RESULTS), help="JSON output ('-' = do not write)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), {args.dtype}; GEMM_WEIGHT_PER_OUTPUT = {GEMM_WEIGHT_PER_OUTPUT:g}; "
          f"times in ms (median of {args.repeats}), speed-up = conv / gemm")
    print(f"{'B':>2} {'in':>5} {'out':>5} {'map':>6} {'w/out':>7} {'rule':>5} | {'fwd conv':>8} {'gemm':>7} "
          f"{'x':>5} | {'bwd conv':>8} {'gemm':>7} {'x':>5}")
    rows = []
    for shape in SHAPES:
        r = measure(shape, args.repeats, getattr(torch, args.dtype))
        rows.append(r)
        b, cin, cout, h, w = shape
        print(f"{b:>2} {cin:>5} {cout:>5} {f'{h}x{w}':>6} {r['weight_per_output']:>7.0f} "
              f"{'gemm' if r['rule_picks_gemm'] else 'conv':>5} | {r['conv_forward_ms']:>8.2f} "
              f"{r['gemm_forward_ms']:>7.2f} {r['forward_speedup']:>5.2f} | {r['conv_backward_ms']:>8.2f} "
              f"{r['gemm_backward_ms']:>7.2f} {r['backward_speedup']:>5.2f}", flush=True)
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"machine": machine_info(torch.device("cpu")), "dtype": args.dtype,
                                              "threads": args.threads, "rows": rows}, indent=1))
        print(f"written {args.out}")
    print("reproduce: OMP_NUM_THREADS=1 THP_MEM_ALLOC_ENABLE=1 python benchmarks/weight_bound_convs.py "
          f"--threads {args.threads} --dtype {args.dtype} --repeats {args.repeats}")
    return rows


if __name__ == "__main__":
    main()
