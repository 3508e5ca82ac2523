"""``gensynth paint`` latency: stroke end -> new image displayed, in a real (headless Chromium) page, on the CPU.

For each model the app is served in this process and the page is driven with real pointer strokes; the page
records, per stroke, the time from the pointer's release to the new image's ``load`` event (debounce, request
encoding, HTTP, model, PNG encoding, decoding). The server also reports the model's own milliseconds, the reference
in the same process: ``overhead`` is what the page, HTTP and PNG add on top of the forward pass.

Models (random init is fine for timing; canvas 256x256):
* ``oasis-full``: the OASIS generator at the paper's full width for ADE20K (151 classes, 74.3 M parameters);
* ``oasis-demo``: the generator ``gensynth train --model oasis --data demo`` trains (the demo preset's widths);
* ``--checkpoint RUN``: a trained run as well (EMA generator), e.g. the demo run of the README screenshot.

    OMP_NUM_THREADS=2 nice -n 10 python benchmarks/paint.py [--strokes 6] [--checkpoint runs/oasis-demo]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from gensynth.api import build_model
from gensynth.generate.api import Synthesizer
from gensynth.paint.browser import PaintPage, find_chromium
from gensynth.paint.server import PaintServer
from gensynth.paint.session import PaintSession

RESULTS = Path(__file__).resolve().parent / "results" / "paint.json"
SIZE = (256, 256)


def random_session(data: str, precision: str) -> PaintSession:
    torch.manual_seed(0)
    generator, _, parts = build_model("oasis", data, **{"data.size": list(SIZE)})
    syn = Synthesizer(generator, parts, size=SIZE, source=f"random init (oasis, {data})")
    return PaintSession(syn=syn, size=SIZE, precision=precision)


def forward_gflop(session: PaintSession) -> float:
    """GFLOP of one generator forward on a 256x256 label map (convolutions and matmuls, torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.zeros(1, *SIZE, dtype=torch.long)
    ids[:, SIZE[0] // 2:] = session.default_class()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        session.syn.generate(ids, samples=1, seed=0)
    return counter.get_total_flops() / 1e9


def measure(session: PaintSession, strokes: int, chromium, downloads: Path) -> dict:
    params = sum(p.numel() for p in session.syn.generator.parameters())
    gflop = forward_gflop(session)
    warm_ms = session.warm_up()
    server = PaintServer(session, port=0)
    server.start_background()
    page = PaintPage.open(server.url, chromium, downloads, timeout=300)
    try:
        classes = [c["id"] for c in session.info()["classes"]][1:]
        before = len(page.probe()["timings"])
        for i in range(strokes):
            n = page.generations()
            page.choose_class(classes[i % len(classes)])
            y = 30 + 30 * i
            page.stroke([(20, y), (120, y + 10), (200, y)], size=12)
            page.wait_for_image(n, timeout=300)
        timings = page.probe()["timings"][before:]
    finally:
        page.close()
        server.shutdown()
        server.server_close()
    total = [t["total"] for t in timings]
    model = [t["model"] for t in timings]
    return {"source": session.syn.source, "parameters": params, "forward_gflop": round(gflop, 1),
            "precision": session.precision, "size": list(SIZE), "warm_up_ms": round(warm_ms, 1),
            "strokes": len(timings), "total_ms": [round(t, 1) for t in total], "model_ms": [round(m, 1) for m in model],
            "median_total_ms": round(statistics.median(total), 1),
            "median_model_ms": round(statistics.median(model), 1),
            "median_overhead_ms": round(statistics.median(t - m for t, m in zip(total, model)), 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strokes", type=int, default=6)
    ap.add_argument("--models", default="oasis-demo,oasis-full")
    ap.add_argument("--checkpoint", default=None, help="also time this trained run (EMA generator) at 256x256")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 (autocast)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print("Chromium/chromedriver not found: apt-get install chromium chromium-driver", file=sys.stderr)
        return 1
    sessions = {}
    for precision in [p for p in args.precisions.split(",") if p]:
        for name in [m for m in args.models.split(",") if m]:
            sessions[f"{name} {precision}"] = random_session({"oasis-full": "ade20k", "oasis-demo": "demo"}[name],
                                                             precision)
        if args.checkpoint:
            sessions[f"checkpoint {precision}"] = PaintSession.from_checkpoint(args.checkpoint, size=SIZE,
                                                                               precision=precision)
    results = {"torch_threads": torch.get_num_threads(), "models": {}}
    print(f"torch threads {torch.get_num_threads()}; canvas {SIZE[0]}x{SIZE[1]}; {args.strokes} strokes per model")
    print(f"{'model':<17} {'params':>11} {'GFLOP':>6} {'stroke->image (median)':>23} {'model':>9} {'overhead':>9} "
          f"{'vs 1 s':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, session in sessions.items():
            r = measure(session, args.strokes, chromium, Path(tmp) / name)
            results["models"][name] = r
            print(f"{name:<17} {r['parameters']:>11,} {r['forward_gflop']:>6.1f} {r['median_total_ms']:>20.0f} ms "
                  f"{r['median_model_ms']:>6.0f} ms "
                  f"{r['median_overhead_ms']:>6.0f} ms {r['median_total_ms'] / 1000:>6.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
