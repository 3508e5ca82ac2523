"""Before step 1: what this run will cost, measured on the run's own models and first batch.

:func:`measure_step` runs training steps (G step + D step, forward and backward, no optimiser step) of *copies* of
the generator and discriminator on the first sample and the first four (at most) of the run's first micro-batch, under an isolated RNG,
and extrapolates linearly in the batch to the per-process micro-batch. The run itself is untouched: its weights,
batch-norm statistics, spectral-norm vectors and random streams are those it would have without the measurement.

Peak memory is read from the device: CUDA's allocator peak on a GPU; on the CPU the process's resident-set high-water
mark (Linux ``VmHWM``, reset before each measured step through ``/proc/self/clear_refs``; elsewhere
``ru_maxrss``). The estimate adds what the measurement does not hold (Adam's two moments) and keeps what it holds
twice (the copies), so it errs high by one copy of the weights. It is compared with what the machine offers:
the GPU's memory, or the RAM available to this process (``MemAvailable``, a cgroup limit) shared by the
processes of this node.
"""
from __future__ import annotations

import copy
import os
import resource
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from gensynth.interfaces import Condition


@dataclass
class StepEstimate:
    """What one optimisation step costs at the run's batch (per process)."""

    seconds_per_step: float  # accum x the extrapolated micro-batch step
    peak_bytes: int | None  # estimated peak memory of training (None: not measurable here)
    available_bytes: int | None  # what the device or machine offers this process
    memory_kind: str  # "GPU memory" or "RAM"
    measured_batches: tuple[int, ...]  # the batch sizes actually run
    micro_batch: int
    accum: int

    @property
    def exceeds_memory(self) -> bool:
        return self.peak_bytes is not None and self.available_bytes is not None and \
            self.peak_bytes > self.available_bytes

    def run_seconds(self, steps: int) -> float:
        return self.seconds_per_step * max(0, steps)


def format_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def format_duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 60:
        return f"{minutes:.0f} min"
    hours = minutes / 60
    if hours < 48:
        return f"{int(hours)} h {int(minutes % 60):02d} min"
    return f"{hours / 24:.1f} days"


# ----------------------------------------------------------------------------------------------- memory readings
def _read_proc_kb(path: str, field: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    """Reset the resident-set high-water mark (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_peak() -> int:
    peak = _read_proc_kb("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru if sys.platform == "darwin" else ru * 1024  # bytes on macOS, kB on Linux


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = open(path).read().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < (1 << 60):
            return int(raw)
    return None


def available_memory(device: torch.device, processes_per_node: int = 1) -> int | None:
    """Bytes this process may use: the GPU's total memory, or (CPU) this process's resident memory plus the
    machine's available memory (capped by a cgroup limit), divided among the node's processes."""
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        return int(total)
    if device.type != "cpu":
        return None
    rss = _read_proc_kb("/proc/self/status", "VmRSS")
    avail = _read_proc_kb("/proc/meminfo", "MemAvailable")
    if rss is None or avail is None:
        return None
    total = rss * processes_per_node + avail
    limit = _cgroup_limit()
    if limit is not None:
        total = min(total, limit)
    return int(total // max(1, processes_per_node))


# ----------------------------------------------------------------------------------------------- the measurement
LossesFn = Callable[..., dict]


def _slice(real: Tensor, cond: Condition, n: int) -> tuple[Tensor, Condition]:
    return real[:n], cond._map(lambda t: t[:n])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _one_step(G: nn.Module, D: nn.Module, g_losses: LossesFn, d_losses: LossesFn, real: Tensor, cond: Condition,
              step: int, autocast_ctx: Callable) -> None:
    """One G step's and one D step's forward and backward, as the trainer runs them (D frozen in the G step)."""
    d_params = [p for p in D.parameters() if p.requires_grad]
    for p in d_params:
        p.requires_grad_(False)
    with autocast_ctx():
        losses = g_losses(G, D, real, cond, step)
    sum(losses.values()).float().backward()
    for p in d_params:
        p.requires_grad_(True)
    G.zero_grad(set_to_none=True)
    with autocast_ctx():
        losses = d_losses(G, D, real, cond, step)
    sum(losses.values()).float().backward()
    D.zero_grad(set_to_none=True)


def measure_step(G: nn.Module, D: nn.Module, g_losses: LossesFn, d_losses: LossesFn, micros: Sequence,
                 device: torch.device, autocast_ctx: Callable, *, step: int = 0, processes_per_node: int = 1
                 ) -> StepEstimate:
    """Measure a training step on copies of ``G`` and ``D`` (see the module docstring).

    micros: the step's micro-batches, each ``(real (B, 3, H, W), Condition)``; the first is measured.
    """
    real, cond = micros[0]
    micro = int(real.shape[0])
    sizes = (1, min(micro, 4)) if micro >= 2 else (1,)  # two points for the slope in the batch
    rng_devices = [device] if device.type == "cuda" else []
    Gc, Dc = copy.deepcopy(G), copy.deepcopy(D)
    Gc.train(), Dc.train()
    trainable = sum(p.numel() * p.element_size() for m in (G, D) for p in m.parameters() if p.requires_grad)
    peaks: list[int] = []
    times: list[float] = []
    with torch.random.fork_rng(devices=rng_devices):
        r1, c1 = _slice(real, cond, 1)
        _one_step(Gc, Dc, g_losses, d_losses, r1, c1, step, autocast_ctx)  # warm-up: one-time allocations, kernels
        for n in sizes:
            rn, cn = _slice(real, cond, n)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            else:
                _reset_cpu_peak()
            _sync(device)
            t0 = time.perf_counter()
            _one_step(Gc, Dc, g_losses, d_losses, rn, cn, step, autocast_ctx)
            _sync(device)
            times.append(time.perf_counter() - t0)
            peaks.append(int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else
                         _cpu_peak() if device.type == "cpu" else -1)
    from gensynth.nn.grad_buffer import release_gradient_buffers

    release_gradient_buffers(Gc), release_gradient_buffers(Dc)  # the copies' kept gradient memory goes now
    del Gc, Dc
    if len(sizes) == 2:
        per_sample = (micro - 1) / (sizes[1] - 1)
        t_micro = times[0] + per_sample * max(0.0, times[1] - times[0])
        peak = peaks[0] + int(per_sample * max(0, peaks[1] - peaks[0]))
    else:
        t_micro, peak = times[0], peaks[0]
    accum = len(micros)
    peak_bytes = None if peak < 0 else int(peak + trainable)  # + Adam's 2 moments - the copies' weights
    return StepEstimate(seconds_per_step=accum * t_micro, peak_bytes=peak_bytes,
                        available_bytes=available_memory(device, processes_per_node),
                        memory_kind="GPU memory" if device.type == "cuda" else "RAM",
                        measured_batches=sizes, micro_batch=micro, accum=accum)


def memory_advice(est: StepEstimate) -> str:
    return (f"the estimated peak {est.memory_kind} of training, {format_bytes(est.peak_bytes)}, exceeds the "
            f"{format_bytes(est.available_bytes)} this process has: the run may be killed for memory. Lower "
            f"--batch-size (or set trainer.micro_batch_size={max(1, est.micro_batch // 2)} to accumulate), "
            f"train at a smaller --size, or pick a smaller --scale (tiny, small)")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe_device(device: torch.device, world_size: int) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        what = f"{device} ({name})"
    elif device.type == "cpu":
        what = f"cpu ({torch.get_num_threads()} threads)"
    else:
        what = str(device)
    return what if world_size == 1 else f"{what}, {world_size} processes"


def processes_per_node() -> int:
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


# ----------------------------------------------------------------------------------------------- before the data
def check_input_size(parts, size: tuple[int, int]) -> None:
    """Run the generator and discriminator of ``parts`` on the ``meta`` device (no memory, no compute) at the
    training ``size``, so that a size the models cannot take is an error before any data is read or converted.

    Only gensynth's own errors (ConfigError naming the size and the option to change) are raised; anything else a
    part does not support on the meta device is left to the first real step to report."""
    from gensynth.build import build_discriminator, build_generator
    from gensynth.errors import GensynthError

    h, w = size
    try:
        with torch.device("meta"):
            G, D = build_generator(parts).eval(), build_discriminator(parts).eval()  # shapes only: no batch stats
            labels = torch.zeros(1, parts.num_classes, h, w)
            cond = Condition(labels,
                             instance_edges=torch.zeros(1, 1, h, w) if getattr(G, "uses_instance_edges", False) else None,
                             style_image=torch.zeros(1, 3, h, w) if getattr(G, "uses_style_image", False) else None)
            with torch.no_grad():
                image = G(cond).image
                D(image, cond if getattr(D, "takes_labels", False) else None)
    except GensynthError:
        raise
    except ValueError as exc:  # the parts' own size checks (e.g. SPADE's start map) raise ValueError
        if "multiple" in str(exc):
            from gensynth.errors import ConfigError

            raise ConfigError(f"data.size {h}x{w}: {exc}") from None
    except Exception:  # noqa: BLE001 - not supported on meta: the first real step checks
        return
