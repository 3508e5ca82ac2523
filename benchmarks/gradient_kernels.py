"""Two backward-pass choices, each timed against the alternative in the same process (rounds alternate):

1. Weight gradients into kept memory (gensynth.nn.grad_buffer): the weight-gradient product of OASIS's
   matrix-product layers written into fresh memory (what autograd allocates every iteration) against memory kept
   from the previous iteration, with the page faults each costs.
2. The one-hot label convolution's weight gradient (gensynth.nn.label_conv): embedding_bag's own backward (sorts
   every index) against gensynth's per-tap ``index_add_``.

    OMP_NUM_THREADS=1 python benchmarks/gradient_kernels.py --threads 1
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_rates import machine_info  # noqa: E402

from gensynth.nn.grad_buffer import GradientBuffer  # noqa: E402
from gensynth.nn.label_conv import _FactoredConv  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gradient_kernels.json"

#: (out, in*kh*kw, columns): g (out, columns) @ cols^T (columns, in*kh*kw), the weight gradient of OASIS's
#: generator layers at batch 1 (columns = positions + sigma's rank-1 column): 1024 -> 1024 on 2x4 and 4x8,
#: 1024 -> 512 on 8x16, SPADE's 128 -> 1024 on 2x4
WEIGHT_GRADIENTS = [(1024, 9216, 9), (1024, 9216, 33), (512, 9216, 129), (1024, 1152, 8)]

#: (pixels, classes, taps, out): the label convolution of SPADE/OASIS layers, 3x3 taps, 128 channels, at 64x128
#: (Cityscapes, 35 classes), 32x64, and 64x64 (ADE20K, 151 classes)
LABEL_GATHERS = [(8192, 35, 9, 128), (2048, 35, 9, 128), (4096, 151, 9, 128)]


def _timed(fn) -> tuple[float, int]:
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def _compare(paths: dict, repeats: int) -> dict:
    times = {k: [] for k in paths}
    faults = {k: [] for k in paths}
    for _ in range(repeats + 2):  # two warm-up rounds
        for name, fn in paths.items():
            t, f = _timed(fn)
            times[name].append(t)
            faults[name].append(f)
    return {name: (statistics.median(times[name][2:]) * 1e3, statistics.median(faults[name][2:]))
            for name in paths}


def weight_gradient(shape: tuple[int, int, int], repeats: int) -> dict:
    out, rest, cols = shape
    g, c = torch.randn(out, cols), torch.randn(cols, rest)
    param = torch.nn.Parameter(torch.empty(out, rest))
    buffer = GradientBuffer()

    def fresh():
        param.grad = torch.mm(g, c)
        param.grad = None  # zero_grad(set_to_none=True)

    def kept():
        memory = buffer.take(param)
        param.grad = torch.mm(g, c, out=memory)
        param.grad = None

    r = _compare({"fresh": fresh, "kept": kept}, repeats)
    return {"shape": list(shape), "megabytes": out * rest * 4 / 2**20,
            "fresh_ms": round(r["fresh"][0], 3), "kept_ms": round(r["kept"][0], 3),
            "fresh_page_faults": r["fresh"][1], "kept_page_faults": r["kept"][1],
            "speedup": round(r["fresh"][0] / r["kept"][0], 3)}


def label_gather(shape: tuple[int, int, int, int], repeats: int) -> dict:
    pixels, classes, taps, out = shape
    g = torch.Generator().manual_seed(0)
    side = int(taps ** 0.5)  # a square kernel
    # rows class * taps + tap of the label table, class == classes being the zero rows outside the image
    index = torch.randint(0, classes + 1, (pixels, taps), generator=g) * taps + torch.arange(taps)
    weight = torch.randn(out, classes, side, side, generator=g, requires_grad=True)
    grad = torch.randn(pixels, out, generator=g)
    table = F.pad(weight.reshape(out, -1).t(), (0, 0, 0, taps))  # the same table, through autograd
    library = F.embedding_bag(index, table, mode="sum")
    # the pixels as one column of a (pixels x 1) map; the masks only give the map's size here
    per_tap = _FactoredConv.apply(index, weight, None, torch.ones(side, pixels), torch.ones(side, 1)).view(pixels, out)

    def run(y):
        return lambda: torch.autograd.grad(y, weight, grad, retain_graph=True)

    a, b = run(library)()[0], run(per_tap)()[0]
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-4), "the two weight gradients differ"
    r = _compare({"embedding_bag": run(library), "per_tap": run(per_tap)}, repeats)
    return {"shape": list(shape), "embedding_bag_ms": round(r["embedding_bag"][0], 3),
            "per_tap_ms": round(r["per_tap"][0], 3), "speedup": round(r["embedding_bag"][0] / r["per_tap"][0], 3)}


def _section(title: str, shapes: list, measure, repeats: int, line) -> list[dict]:
    """Measure every shape, printing ``line(shape, result)`` for each; returns the results."""
    print(title)
    rows = []
    for shape in shapes:
        rows.append(measure(shape, repeats))
        print("  " + line(shape, rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default=str(RESULTS), help="JSON output ('-' = do not write)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), fp32, times in ms (median of {args.repeats}), page faults per call")
    grads = _section("weight gradient g @ cols^T: fresh memory vs memory kept from the previous call",
                     WEIGHT_GRADIENTS, weight_gradient, args.repeats,
                     lambda sh, r: f"({sh[0]} x {sh[2]}) @ ({sh[2]} x {sh[1]}) = {r['megabytes']:.1f} MB: fresh "
                                   f"{r['fresh_ms']:.2f} ms ({r['fresh_page_faults']:.0f} faults), kept "
                                   f"{r['kept_ms']:.2f} ms ({r['kept_page_faults']:.0f} faults), {r['speedup']:.2f}x")
    gathers = _section("label-convolution weight gradient: embedding_bag backward vs per-tap index_add_",
                       LABEL_GATHERS, label_gather, args.repeats,
                       lambda sh, r: f"{sh[0]} pixels, {sh[1]} classes, {sh[2]} taps, {sh[3]} channels: "
                                     f"embedding_bag {r['embedding_bag_ms']:.2f} ms, per tap {r['per_tap_ms']:.2f} ms, "
                                     f"{r['speedup']:.2f}x")
    result = {"machine": machine_info(torch.device("cpu")), "threads": args.threads,
              "weight_gradients": grads, "label_gathers": gathers}
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"written {args.out}")
    print(f"reproduce: OMP_NUM_THREADS=1 python benchmarks/gradient_kernels.py --threads {args.threads} "
          f"--repeats {args.repeats}")
    return result


if __name__ == "__main__":
    main()
