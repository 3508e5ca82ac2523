"""Memory and time of CC-FPSE's per-pixel depthwise 3x3 convolution: ``unfold`` (the official way) vs ``shifted``.

For each shape (the generator's largest depthwise calls at ADE20K 256x256, batch 1) and implementation it measures

* **saved**: bytes autograd keeps for the backward pass (``torch.autograd.graph.saved_tensors_hooks``, distinct
  storages, inputs excluded): exact, independent of the allocator;
* **peak**: the peak resident-set growth of a fresh child process running forward + backward once, minus the inputs
  and their gradients (what a training step pays on top of them);
* **time**: median seconds of forward + backward in this process (interleaved, ``--repeats`` rounds).

    nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/ccfpse_depthconv.py [--repeats 3] [--out results/x.json]

The plugin's default (``model.generator_options.depthwise``) is the implementation this measurement favours.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import _peak_rss_mb, _rss_mb  # noqa: E402

from gensynth_ccfpse.depthconv import depthwise_per_pixel  # noqa: E402

#: (label, N, C, H, W): CC-FPSE G at ADE20K 256x256, batch 1 (up_3 conv_0 / conv_2, up_2 conv_0)
SHAPES = [("up_3 conv_0 (ADE 256)", 1, 128, 256, 256), ("up_3 conv_2 (ADE 256)", 1, 64, 256, 256),
          ("up_2 conv_0 (ADE 256)", 1, 256, 128, 128)]
IMPLS = ("unfold", "shifted")


def inputs(n: int, c: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=g).requires_grad_()
    k = torch.randn(n, 9 * c, h, w, generator=g).requires_grad_()
    return x, k


def saved_bytes(impl: str, x: torch.Tensor, k: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward, the inputs' own storages excluded."""
    storages: dict[int, int] = {}
    own = {x.untyped_storage().data_ptr(), k.untyped_storage().data_ptr()}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        if s.data_ptr() not in own:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = depthwise_per_pixel(x, k, impl)
    del out
    return sum(storages.values())


def child(impl: str, n: int, c: int, h: int, w: int) -> None:
    torch.set_num_threads(1)
    x, k = inputs(n, c, h, w)
    x.grad = torch.zeros_like(x)  # the gradients' own memory is not the implementation's
    k.grad = torch.zeros_like(k)
    base = _rss_mb()
    depthwise_per_pixel(x, k, impl).sum().backward()
    print(f"PEAK_MB {_peak_rss_mb() - base:.1f}")


def child_peak(impl: str, shape: tuple[int, int, int, int]) -> float | None:
    out = subprocess.run([sys.executable, __file__, "--_child", impl, *map(str, shape)], capture_output=True,
                         text=True)
    for line in out.stdout.splitlines():
        if line.startswith("PEAK_MB "):
            return float(line.split()[1])
    print(f"  (child failed: {out.stderr.strip().splitlines()[-1:]})")
    return None


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ccfpse_depthconv.json"))
    ap.add_argument("--_child", nargs=5)
    a = ap.parse_args(argv)
    if a._child:
        child(a._child[0], *map(int, a._child[1:]))
        return []
    rows = []
    for label, *shape in SHAPES:
        x, k = inputs(*shape)
        act_mb = x.numel() * 4 / 2 ** 20
        times = {impl: [] for impl in IMPLS}
        for _ in range(a.repeats):
            for impl in IMPLS:
                x.grad = k.grad = None
                t0 = time.perf_counter()
                depthwise_per_pixel(x, k, impl).sum().backward()
                times[impl].append(time.perf_counter() - t0)
        for impl in IMPLS:
            rows.append({"shape": label, "NCHW": shape, "impl": impl, "activation_mb": act_mb,
                         "saved_mb": saved_bytes(impl, x, k) / 2 ** 20, "peak_mb": child_peak(impl, tuple(shape)),
                         "seconds": statistics.median(times[impl])})
        ref = rows[-2]
        for r in rows[-2:]:
            r["saved_vs_unfold"] = r["saved_mb"] / ref["saved_mb"] if ref["saved_mb"] else None
            r["peak_vs_unfold"] = r["peak_mb"] / ref["peak_mb"] if r["peak_mb"] and ref["peak_mb"] else None
            r["time_vs_unfold"] = r["seconds"] / ref["seconds"]
            print(f"{label:24s} {r['impl']:8s} activation {act_mb:6.1f} MB  saved {r['saved_mb']:7.1f} MB "
                  f"({r['saved_vs_unfold']:.2f}x)  peak {r['peak_mb'] or float('nan'):7.1f} MB "
                  f"({(r['peak_vs_unfold'] or float('nan')):.2f}x)  {r['seconds']:.3f} s ({r['time_vs_unfold']:.2f}x)",
                  flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows},
                                      indent=1))
    print(f"wrote {a.out}")
    return rows


if __name__ == "__main__":
    main()
