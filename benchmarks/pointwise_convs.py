"""1x1 convolutions: the library convolution against gensynth's matrix products (gensynth.nn.pointwise_conv).

For the 1x1 layers of OASIS at the CPU benchmark sizes (the generator's learned shortcuts at batch 1, the
discriminator's last shortcut and its output layer at batch 3 = the merged D-step call), it times F.conv2d and
gensynth.nn.gemm_conv.gemm_conv2d in the same process, forward alone and backward (input and weight gradients)
alone, for the memory formats the training iteration hands them: the input NHWC or NCHW (as gensynth's
convolutions arrange it by shape), the output gradient NHWC (from a convolution) or NCHW (from the loss). Rounds
alternate between the two paths (the timing loop of weight_bound_convs.py); it prints both times and their ratio.

    OMP_NUM_THREADS=1 python benchmarks/pointwise_convs.py --threads 1
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_rates import machine_info  # noqa: E402
from weight_bound_convs import median_forward_backward_ms  # noqa: E402

from gensynth.nn.gemm_conv import gemm_conv2d  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "pointwise_convs.json"

#: (batch, in, out, H, W, input format, output-gradient format, where): the generator's and the D step's 1x1 calls
#: of one OASIS ADE20K iteration at 64x64 with the formats they met there (recorded with a spy on
#: gensynth.nn.pointwise_conv; the G step's batch-1 discriminator calls are left out), then the two largest of
#: Cityscapes at 64x128. G = the generator's learned shortcuts (batch 1); D = the discriminator's
#: shortcuts and output layer in the merged D-step call (batch 3)
SHAPES = [
    (1, 1024, 512, 8, 8, "nchw", "nhwc", "G"),
    (1, 512, 256, 16, 16, "nchw", "nhwc", "G"),
    (1, 256, 128, 32, 32, "nchw", "nhwc", "G"),
    (1, 128, 64, 64, 64, "nhwc", "nhwc", "G"),
    (3, 3, 128, 32, 32, "nhwc", "nhwc", "D"),
    (3, 128, 256, 16, 16, "nchw", "nchw", "D"),
    (3, 256, 512, 4, 4, "nchw", "nchw", "D"),
    (3, 1024, 256, 4, 4, "nchw", "nchw", "D"),
    (3, 512, 256, 8, 8, "nchw", "nchw", "D"),
    (3, 512, 128, 16, 16, "nchw", "nhwc", "D"),
    (3, 256, 128, 32, 32, "nhwc", "nhwc", "D"),
    (3, 256, 64, 64, 64, "nhwc", "nhwc", "D"),
    (3, 64, 152, 64, 64, "nhwc", "nchw", "D output"),
    (3, 256, 64, 64, 128, "nhwc", "nhwc", "D, Cityscapes"),
    (3, 64, 36, 64, 128, "nhwc", "nchw", "D output, Cityscapes"),
]


def _fmt(t: torch.Tensor, fmt: str) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last if fmt == "nhwc" else torch.contiguous_format)


def measure(shape: tuple, repeats: int) -> dict:
    b, cin, cout, h, w, x_fmt, g_fmt, _ = shape
    x = _fmt(torch.randn(b, cin, h, w), x_fmt).requires_grad_()
    weight = torch.randn(cout, cin, 1, 1, requires_grad=True)
    grad = _fmt(torch.randn(b, cout, h, w), g_fmt)
    paths = {"conv": lambda: F.conv2d(x, weight),
             "matmul": lambda: gemm_conv2d(x, weight, None, (1, 1), (0, 0), (1, 1))}
    med = median_forward_backward_ms(paths, (x, weight), grad, repeats)
    total = {p: med[f"{p}_forward"] + med[f"{p}_backward"] for p in paths}
    return {"shape": list(shape[:5]), "input_format": x_fmt, "grad_format": g_fmt, "where": shape[7],
            **{f"{k}_ms": round(v, 3) for k, v in med.items()},
            "forward_speedup": round(med["conv_forward"] / med["matmul_forward"], 3),
            "backward_speedup": round(med["conv_backward"] / med["matmul_backward"], 3),
            "speedup": round(total["conv"] / total["matmul"], 3)}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default=str(RESULTS), help="JSON output ('-' = do not write)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), fp32; times in ms (median of {args.repeats}), speed-up = conv / matmul")
    print(f"{'B':>2} {'in':>5} {'out':>4} {'map':>6} {'x':>4} {'grad':>4} | {'fwd conv':>8} {'matmul':>7} {'x':>5} | "
          f"{'bwd conv':>8} {'matmul':>7} {'x':>5} | {'both':>5}  where")
    rows = []
    for shape in SHAPES:
        r = measure(shape, args.repeats)
        rows.append(r)
        b, cin, cout, h, w, x_fmt, g_fmt, where = shape
        print(f"{b:>2} {cin:>5} {cout:>4} {f'{h}x{w}':>6} {x_fmt:>4} {g_fmt:>4} | {r['conv_forward_ms']:>8.2f} "
              f"{r['matmul_forward_ms']:>7.2f} {r['forward_speedup']:>5.2f} | {r['conv_backward_ms']:>8.2f} "
              f"{r['matmul_backward_ms']:>7.2f} {r['backward_speedup']:>5.2f} | {r['speedup']:>5.2f}  {where}",
              flush=True)
    ade = [r for r in rows if "Cityscapes" not in r["where"]]
    conv_ms = sum(r["conv_forward_ms"] + r["conv_backward_ms"] for r in ade)
    matmul_ms = sum(r["matmul_forward_ms"] + r["matmul_backward_ms"] for r in ade)
    print(f"the {len(ade)} ADE20K calls together: conv {conv_ms:.1f} ms, matmul {matmul_ms:.1f} ms, "
          f"{conv_ms / matmul_ms:.2f}x")
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"machine": machine_info(torch.device("cpu")), "threads": args.threads,
                                              "rows": rows}, indent=1))
        print(f"written {args.out}")
    print(f"reproduce: OMP_NUM_THREADS={args.threads} python benchmarks/pointwise_convs.py --threads {args.threads} "
          f"--repeats {args.repeats}")
    return rows


if __name__ == "__main__":
    main()
