"""Speed and memory of one training iteration (G step + D step + EMA), at full widths, against references.

For every configuration (preset x dataset size x batch) it prints the median seconds per iteration, images/s,
the floating-point operations of one iteration (torch.utils.flop_counter: convolutions and matmuls, forward and
backward), the achieved GFLOP/s as a fraction of a dense 3x3 convolution and a dense matmul measured in the same
process, and the peak memory. Reference runs in the same process:

* ``official code``: the official OASIS implementation, when ``--official PATH`` points at a checkout
  (see benchmarks/official_oasis.py; OASIS preset only);
* ``gensynth, official settings``: gensynth's model with every speed option off -- spectral norm dividing the
  weight (torch's hook computation), for-loop Adam, D's weight gradients computed in the G step, per-key EMA,
  dense convolutions of the [noise ; one-hot] label map -- the same computation as the official code; then the
  options switched on one by one (each row's ratio is against
  the row of the official code when measured, else against ``gensynth, official settings``).

    OMP_NUM_THREADS=2 python benchmarks/train_step.py                                     # CPU sizes, both presets
    python benchmarks/train_step.py --official ~/OASIS --configs ade20k-64x64 --repeats 5
    python benchmarks/train_step.py --device cuda --configs ade20k-256x256 cityscapes-256x512 --batch 4
    python benchmarks/train_step.py --official ~/OASIS --presets oasis --interleave \
        --variants "gensynth fp32 (default: + convolutions by shape)" "gensynth bf16 autocast"

Peak memory: CUDA ``max_memory_allocated``; on CPU the peak resident set size of a child process that runs the
variant alone (``--memory``, on by default on CPU), minus the resident size after importing torch and gensynth.
Timings are never asserted by the tests; tests/test_speed_options.py checks that every option gives equal results.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_rates import dense_rates, machine_info  # noqa: E402

from gensynth.build import build_discriminator, build_generator, build_method, resolve_parts  # noqa: E402
from gensynth.config import resolve  # noqa: E402
from gensynth.interfaces import Condition, one_hot  # noqa: E402
from gensynth.nn.spectral import SpectralConv2d  # noqa: E402
from gensynth.train.ema import EMA  # noqa: E402
from gensynth.train.speed import apply_memory_layout, make_adam  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "train_step.json"

#: name -> (dataset, (H, W)); the 64x.. sizes are the official widths at a resolution a CPU can run
CONFIGS = {
    "ade20k-64x64": ("ade20k", (64, 64)),
    "cityscapes-64x128": ("cityscapes", (64, 128)),
    "ade20k-256x256": ("ade20k", (256, 256)),
    "cityscapes-256x512": ("cityscapes", (256, 512)),
}
CPU_CONFIGS = ["ade20k-64x64", "cityscapes-64x128"]


@dataclass(frozen=True)
class Variant:
    """One way of running gensynth's iteration."""

    name: str
    sn: str = "auto"          # spectral-norm scaling: "weight" = torch's hook computation, "auto" = gensynth
    adam: str = "fused"       # fused | foreach | for-loop
    freeze_d: bool = True     # D's weight gradients skipped in the G step; gradients released after each step
    ema: str = "foreach"      # foreach | per-key (official update_EMA)
    precision: str = "fp32"   # fp32 | bf16
    compile: bool = False
    factored: bool = True     # label convolutions on the factored [noise ; one-hot] map (gensynth.nn.label_conv)
    merge_d: bool = True      # the D step's fake/real/LabelMix calls as one (trainer.merge_d_calls)
    layout: str = "by_shape"  # nchw | nhwc | by_shape, as trainer.channels_last (gensynth.train.speed)
    recycle: bool = True      # matrix-product layers write weight gradients into kept memory (gensynth.nn.grad_buffer)


OFFICIAL_SETTINGS = Variant("gensynth, official settings", sn="weight", adam="for-loop", freeze_d=False, ema="per-key",
                            factored=False, merge_d=False, layout="nchw")
LADDER = [
    OFFICIAL_SETTINGS,
    replace(OFFICIAL_SETTINGS, name="+ spectral norm on outputs", sn="auto"),
    replace(OFFICIAL_SETTINGS, name="+ fused Adam", sn="auto", adam="fused"),
    replace(OFFICIAL_SETTINGS, name="+ D frozen in G step, gradients released", sn="auto", adam="fused",
            freeze_d=True),
    replace(OFFICIAL_SETTINGS, name="+ foreach EMA", sn="auto", adam="fused", freeze_d=True, ema="foreach"),
    replace(OFFICIAL_SETTINGS, name="+ label convs without zeros", sn="auto", adam="fused", freeze_d=True,
            ema="foreach", factored=True),
    replace(OFFICIAL_SETTINGS, name="+ D step's calls merged", sn="auto", adam="fused", freeze_d=True,
            ema="foreach", factored=True, merge_d=True),
    Variant("gensynth fp32 (default: + convolutions by shape)"),
    Variant("gensynth bf16 autocast", precision="bf16"),
    Variant("gensynth fp32 channels-last", layout="nhwc"),
    Variant("gensynth bf16, fresh weight-gradient memory", precision="bf16", recycle=False),
]
COMPILED = Variant("gensynth fp32 torch.compile", compile=True)


def _proc_status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _rss_mb() -> float:
    """Current resident set size (MB)."""
    now = _proc_status_mb("VmRSS")
    return now if now is not None else _peak_rss_mb()


def _peak_rss_mb() -> float:
    """Peak resident set size of this process (MB). Linux: VmHWM, which starts afresh at exec (ru_maxrss does not:
    a child started by a big parent would report the parent's peak)."""
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2 ** 20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _overrides(preset: str, data: str, size: tuple[int, int], batch: int) -> dict:
    o = {"model.preset": preset, "data.name": data, "data.size": list(size), "trainer.batch_size": batch}
    if preset.startswith("spade") or preset == "cc-fpse":  # the perceptual term costs the same with random VGG
        o["model.loss_options"] = {"vgg": {"random_init": True}}  # weights (none downloadable)
    if preset == "cc-fpse":  # its VAE's Linear head is built for the training size
        o["model.generator_options.size"] = list(size)
    return o


class GensynthRun:
    """gensynth's parts for one configuration and variant; :meth:`iteration` = the trainer's step order."""

    def __init__(self, preset: str, data: str, size: tuple[int, int], batch: int, variant: Variant,
                 device: torch.device, seed: int = 0):
        cfg, _ = resolve(_overrides(preset, data, size, batch))
        self.cfg, self.parts, self.variant, self.device = cfg, resolve_parts(cfg), variant, device
        torch.manual_seed(seed)
        self.G = build_generator(self.parts).to(device)
        self.D = build_discriminator(self.parts).to(device)
        self.method = build_method(self.parts)
        self.method.merge_d_calls = variant.merge_d
        for term in self.method.terms:
            term.to(device)
        if variant.sn != "auto":
            for m in (*self.G.modules(), *self.D.modules()):
                if isinstance(m, SpectralConv2d):
                    m.scale = variant.sn
        if hasattr(self.G, "factored_labels"):
            self.G.factored_labels = variant.factored
        apply_memory_layout(self.G, variant.layout), apply_memory_layout(self.D, variant.layout)
        if not variant.recycle:
            for m in [*self.G.modules(), *self.D.modules()]:
                if hasattr(type(m), "recycle_weight_grad"):
                    m.recycle_weight_grad = False
        oc = cfg.optim
        betas = (oc.beta1, oc.beta2)
        self.opt_g = make_adam(self.G.parameters(), oc.lr_g, betas, variant.adam, device)
        self.opt_d = make_adam(self.D.parameters(), oc.lr_d, betas, variant.adam, device)
        self.ema = EMA(self.G, cfg.trainer.ema_decay or 0.9999, warmup=False)
        self.G_run, self.D_run = (torch.compile(self.G), torch.compile(self.D)) if variant.compile else (self.G, self.D)
        n = self.parts.num_classes
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, n, (batch, *size), generator=g)
        self.real = (torch.rand(batch, 3, *size, generator=g) * 2 - 1).to(device)
        ids = self.ids.to(device)
        self.cond = Condition(one_hot(ids, n), ids=ids)  # as the trainer's data loader builds it
        if variant.layout == "nhwc":  # as the trainer feeds batches
            self.real = self.real.contiguous(memory_format=torch.channels_last)
            self.cond = self.cond.to_memory_format(torch.channels_last)
        self.sums: dict[str, torch.Tensor] = {}

    def params(self) -> tuple[int, int]:
        return sum(p.numel() for p in self.G.parameters()), sum(p.numel() for p in self.D.parameters())

    def _ema_per_key(self) -> None:
        with torch.no_grad():
            ema, g, d = self.ema.module.state_dict(), self.G.state_dict(), self.ema.decay
            for key in ema:
                if ema[key].dtype.is_floating_point:
                    ema[key].copy_(ema[key] * d + g[key] * (1 - d))
                else:
                    ema[key].copy_(g[key])

    def _record(self, losses: dict) -> None:  # as Trainer._record: device-side sums, no host copy
        for k, v in losses.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v

    def iteration(self) -> None:
        v, dev = self.variant, self.device
        ctx = (torch.autocast(dev.type, dtype=torch.bfloat16) if v.precision == "bf16"
               else torch.autocast(dev.type, enabled=False))
        if v.freeze_d:
            self.D.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        with ctx:
            losses = self.method.g_losses(self.G_run, self.D_run, self.real, self.cond)
        self._record(losses)
        sum(losses.values()).float().backward()
        self.D.requires_grad_(True)
        self.opt_g.step()
        if v.freeze_d:  # gensynth: gradients released after each optimiser step (as the trainer)
            self.opt_g.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        with ctx:
            losses = self.method.d_losses(self.G_run, self.D_run, self.real, self.cond)
        self._record(losses)
        sum(losses.values()).float().backward()
        self.opt_d.step()
        if v.freeze_d:
            self.opt_d.zero_grad(set_to_none=True)
        if v.ema == "per-key":
            self._ema_per_key()
        else:
            self.ema.update(self.G)


def make_run(preset: str, config: str, batch: int, variant_name: str, device: torch.device, official: str | None):
    data, size = CONFIGS[config]
    if variant_name == "official code":
        from official_oasis import OfficialRun, official_options

        cfg, _ = resolve(_overrides(preset, data, size, batch))
        parts = resolve_parts(cfg)
        labelmix = next(t.weight for t in build_method(parts).terms if t.name == "labelmix")
        opt = official_options(parts.num_classes, *size, batch, dontcare=parts.dataset.dontcare is not None,
                               labelmix=float(labelmix), ema_decay=cfg.trainer.ema_decay or 0.9999,
                               lr_g=cfg.optim.lr_g, lr_d=cfg.optim.lr_d, gpu=device.type == "cuda")
        run = OfficialRun(official, opt, device)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, parts.num_classes, (batch, *size), generator=g)
        image = torch.rand(batch, 3, *size, generator=g) * 2 - 1
        image, label = run.batch(ids, image)

        class _Official:
            def iteration(self):
                run.iteration(image, label)

            def params(self):
                return (sum(p.numel() for p in run.model.netG.parameters()),
                        sum(p.numel() for p in run.model.netD.parameters()))
        return _Official()
    variant = next(v for v in [*LADDER, COMPILED] if v.name == variant_name)
    return GensynthRun(preset, data, size, batch, variant, device)


def count_flops(run) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run.iteration()
    return int(counter.get_total_flops())


def time_run(run, repeats: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        run.iteration()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run.iteration()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


def interleaved(args, preset: str, config: str, names: list[str], device: torch.device) -> dict:
    """{name: (G params, D params, flops, times)} with the variants timed round-robin in this process."""
    runs = {name: make_run(preset, config, args.batch, name, device, args.official) for name in names}
    info = {name: (*run.params(), count_flops(run)) for name, run in runs.items()}
    for run in runs.values():
        for _ in range(args.warmup):
            run.iteration()
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name, run in runs.items():
            _sync(device)
            t = time.perf_counter()
            run.iteration()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    del runs
    gc.collect()
    return {name: (*info[name], times[name]) for name in names}


def child_peak_memory(args, preset: str, config: str, variant: str) -> float | None:
    """Peak RSS growth (MB) of a fresh process running 3 iterations of one variant (CPU)."""
    cmd = [sys.executable, __file__, "--_child", preset, config, variant, "--batch", str(args.batch),
           "--device", args.device, "--threads", str(args.threads)]
    if args.official:
        cmd += ["--official", args.official]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in out.stdout.splitlines():
        if line.startswith("PEAK_MB "):
            return float(line.split()[1])
    print(f"  (memory child failed for {variant}: {out.stderr.strip().splitlines()[-1:]})")
    return None


def _child(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--_child", nargs=3)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--device")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--official")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    preset, config, variant = a._child
    base = _rss_mb()
    run = make_run(preset, config, a.batch, variant, torch.device(a.device), a.official)
    for _ in range(3):
        run.iteration()
    print(f"PEAK_MB {_peak_rss_mb() - base:.1f}")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if "--_child" in argv:
        _child(argv)
        return {}
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=None, choices=list(CONFIGS),
                    help=f"default: {' '.join(CPU_CONFIGS)} on CPU, all on CUDA")
    ap.add_argument("--presets", nargs="+", default=["oasis", "spade"])
    ap.add_argument("--batch", type=int, default=1, help="per-iteration batch (the official scripts use 20-32 "
                                                         "on GPUs; 1 keeps CPU runs short)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--official", default=None, help="path of an official OASIS checkout to run side by side")
    ap.add_argument("--variants", nargs="+", default=None, help="subset of variant names (default: all)")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile on CPU)")
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the per-variant memory children")
    ap.add_argument("--interleave", action="store_true",
                    help="build the variants of a configuration together and time them round-robin, one iteration "
                         "each in turn (machine-load drift then hits every variant alike; needs their memory at once)")
    ap.add_argument("--out", default=str(RESULTS), help="JSON output ('-' = do not write)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    configs = args.configs or (CPU_CONFIGS if device.type == "cpu" else list(CONFIGS))

    rates = dense_rates(device)
    machine = {**machine_info(device), "dense_rates": rates}
    print(f"device {device}, {machine['torch_threads']} threads, torch {torch.__version__}; dense rates in this "
          f"process: conv3x3 fp32 {rates['conv_fp32']:.0f} GFLOP/s, bf16 {rates['conv_bf16']:.0f}, "
          f"matmul fp32 {rates['matmul_fp32']:.0f}")
    rows = []
    for preset in args.presets:
        for config in configs:
            names = (["official code"] if args.official and preset == "oasis" else []) + [v.name for v in LADDER]
            if args.compile:
                names.append(COMPILED.name)
            if args.variants:
                names = [n for n in names if n in args.variants or n == "official code"]
            ref_time = ref_times = None
            measured = interleaved(args, preset, config, names, device) if args.interleave else {}
            for name in names:
                if name in measured:
                    g_params, d_params, flops, times = measured[name]
                    peak = None
                else:
                    run = make_run(preset, config, args.batch, name, device, args.official)
                    g_params, d_params = run.params()
                    flops = count_flops(run)
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    times = time_run(run, args.repeats, args.warmup, device)
                    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
                    del run
                    gc.collect()
                if peak is None and args.memory:
                    peak = child_peak_memory(args, preset, config, name)
                sec = statistics.median(times)
                ref_time = ref_time or sec
                ref_times = ref_times or times
                # interleaved: the median of the per-round ratios, less sensitive to a slow spell of the machine
                paired = (statistics.median(r / t for r, t in zip(ref_times, times)) if name in measured else None)
                prec = "bf16" if "bf16" in name else "fp32"
                row = {"preset": preset, "config": config, "batch": args.batch, "variant": name, "seconds": sec,
                       "times": times, "images_per_s": args.batch / sec, "gflop": flops / 1e9,
                       "gflop_per_s": flops / sec / 1e9,
                       "fraction_of_conv": flops / sec / 1e9 / rates[f"conv_{prec}"],
                       "fraction_of_matmul": flops / sec / 1e9 / rates[f"matmul_{prec}"],
                       "speedup_vs_reference": ref_time / sec, "paired_speedup": paired, "peak_mb": peak,
                       "params_g": g_params, "params_d": d_params}
                rows.append(row)
                print(f"{preset:>6} {config:>18} {name:>40}: {sec:7.3f} s  {row['images_per_s']:6.2f} img/s  "
                      f"{row['gflop']:6.1f} GFLOP  {row['gflop_per_s']:6.1f} GFLOP/s  "
                      f"{100 * row['fraction_of_conv']:4.0f}% conv  x{row['speedup_vs_reference']:.2f}"
                      f"{'' if paired is None else f' (paired x{paired:.2f})'}  "
                      f"peak {peak if peak is None else round(peak)} MB", flush=True)
            ref_mem = rows[-len(names)]["peak_mb"]
            for r in rows[-len(names):]:
                r["memory_vs_reference"] = (r["peak_mb"] / ref_mem) if r["peak_mb"] and ref_mem else None
    machine["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    report = {"machine": machine, "args": {k: v for k, v in vars(args).items() if k != "out"},
              "command": "python benchmarks/train_step.py " + " ".join(argv), "rows": rows,
              "variants": [asdict(v) for v in LADDER]}
    print_table(rows)
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    return report


def print_table(rows: list[dict]) -> None:
    print("\n| preset | config | variant | s/iter | img/s | GFLOP | GFLOP/s | % conv | speed-up | paired | peak MB "
          "| memory |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mem = f"{r['peak_mb']:.0f}" if r["peak_mb"] else "-"
        mrel = f"{r['memory_vs_reference']:.2f}" if r.get("memory_vs_reference") else "-"
        paired = "-" if r.get("paired_speedup") is None else f"{r['paired_speedup']:.2f}"
        print(f"| {r['preset']} | {r['config']} | {r['variant']} | {r['seconds']:.2f} | {r['images_per_s']:.2f} | "
              f"{r['gflop']:.0f} | {r['gflop_per_s']:.0f} | {100 * r['fraction_of_conv']:.0f}% | "
              f"{r['speedup_vs_reference']:.2f} | {paired} | {mem} | {mrel} |")


if __name__ == "__main__":
    main()
