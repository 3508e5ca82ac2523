"""The training loop: every model, one process or many (torchrun), resumable, never losing a run.

Per step (as the official OASIS code): a G step (D's parameters frozen) then a D step on the same
batch, then the EMA update. Losses come from the preset's training method; optimisers and schedules
from the ``optim`` section; nothing model-specific lives here.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from rich.console import Console

from gensynth.build import (Parts, build_discriminator, build_generator, build_method, canonical_options,
                            parts_summary, resolve_parts)
from gensynth.checkpoint import (BEST, LATEST, Checkpoint, checkpoint_root, list_checkpoints, load_checkpoint,
                                 prune_checkpoints, read_pointer, remove_interrupted_writes, save_checkpoint,
                                 step_dir_name, write_pointer, write_text_atomic)
from gensynth.config import RunConfig, dump_resolved, flatten
from gensynth.contracts import FirstStepContracts, first_step_contracts
from gensynth.errors import CheckpointError, ConfigError, GensynthError
from gensynth.interfaces import NoiseKind
from gensynth.method import unwrap
from gensynth.nn.grad_buffer import release_gradient_buffers
from gensynth.train import distributed as dist_util
from gensynth.train.ema import (EMA, entries_changed_by_refresh, has_batchnorm, refreshed_copy, restore_entries,
                                state_is_finite)
from gensynth.train.health import HealthMonitor, HealthReport, noise_dependence
from gensynth.train.init_from import InitReport, load_matching
from gensynth.train.logging import MetricsLog, ProgressDisplay
from gensynth.train.precision import autocast, make_scaler
from gensynth.train.param_groups import param_groups
from gensynth.train.preflight import check_input_size
from gensynth.train.run_lock import RunDirBusyError, RunLock
from gensynth.train.samples import make_grid, palette, save_png
from gensynth.train.schedule import make_scheduler
from gensynth.train.signals import StopRequest
from gensynth.train.stable_start import normalise_spectral_weights
from gensynth.train.speed import apply_memory_layout, make_adam, resolve_channels_last, set_tf32
from gensynth.train.state import capture_rng, restore_rng, seed_everything


@dataclass
class TrainResult:
    """Where the run lives, the step it reached, and its last logged (and evaluated) metrics."""

    run_dir: Path
    step: int
    metrics: dict[str, float] = field(default_factory=dict)
    stopped_by: str | None = None  # "SIGTERM"/"SIGINT" when a signal ended the run early
    health: list[str] = field(default_factory=list)  # the health monitor's findings, "kind at step N: message"
    estimate: object | None = None  # gensynth.train.preflight.StepEstimate measured before step 1 (None: not run)


class NonFiniteLossError(GensynthError, FloatingPointError):
    """A loss became NaN/inf; the run stopped without saving the damaged weights."""


class UnhealthyTrainingError(GensynthError):
    """The health monitor found a problem and ``health.action`` is ``stop`` (a checkpoint was saved first)."""


# keys that may change between a run and its resumption without changing what is trained
_RESUME_FREE = ("trainer.steps", "trainer.epochs", "trainer.run_dir", "trainer.log_every", "trainer.sample_every",
                "trainer.checkpoint_every", "trainer.keep_last", "trainer.device", "trainer.init_from",
                "data.root", "data.allow_pipe", "data.num_workers", "data.cache_dir", "eval.", "health.")


# what a training_state.pt must hold to be resumed from
_TRAINING_STATE_KEYS = ("step", "optim_g", "optim_d", "sched_g", "sched_d", "scaler_g", "scaler_d")


def default_run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.trainer.run_dir) if cfg.trainer.run_dir else Path("runs") / f"{cfg.model.preset}-{cfg.data.name}"


def _load_data_api():
    try:
        from gensynth.data import loader
    except ImportError as exc:  # pragma: no cover - the data package is part of the core
        raise GensynthError(f"the data loader (gensynth.data.loader) is unavailable: {exc}") from exc
    return loader


@contextlib.contextmanager
def isolated_rng(device: torch.device):
    """Run a block without disturbing the global python/numpy/torch RNG streams of training."""
    import random

    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


class Trainer:
    """One training run. ``run()`` returns a :class:`TrainResult`."""

    def __init__(self, cfg: RunConfig, provenance: dict[str, str], *, console: Console | None = None,
                 resume: bool | None = None):
        self.cfg = cfg
        self.provenance = provenance
        self.console = console
        self.resume_mode = resume
        self.run_dir = default_run_dir(cfg)
        self.ckpt_root = checkpoint_root(self.run_dir)

    # ------------------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        cfg = self.cfg
        self.dist = dist_util.setup(cfg.trainer.device)
        d = self.dist
        refused: BaseException | None = None
        if d.is_main:  # one trainer per run directory (released in run())
            try:
                self._lock = RunLock(self.run_dir).acquire()
            except GensynthError as exc:
                refused = exc
            else:
                if self._lock.taken_over:
                    (self.console or Console(stderr=True)).print(
                        f"[yellow]warning:[/] took over the lock of {self.run_dir} from {self._lock.taken_over}, "
                        f"which is no longer running", highlight=False, soft_wrap=True)
        if d.enabled:  # every process stops when rank 0 could not take the lock (none waits for it forever)
            flag = torch.tensor([1.0 if refused is not None else 0.0], device=d.device)
            dist_util.all_reduce_max(flag, d)
            if refused is None and flag.item() > 0:
                raise RunDirBusyError(f"{self.run_dir}: rank 0 could not take the run directory's lock (see its "
                                      f"error); this process stops too")
        if refused is not None:
            raise refused
        self.device = d.device
        self.loader = _load_data_api()
        self.parts: Parts = resolve_parts(cfg)
        self.spec = self.parts.dataset
        check_input_size(self.parts, tuple(cfg.data.size or self.spec.default_size))  # before any data is read
        b = cfg.trainer.batch_size
        if b % d.world_size:
            raise ConfigError(f"trainer.batch_size ({b}) is the global batch and must be divisible by the number of "
                              f"processes ({d.world_size})")
        self.rank_batch = b // d.world_size
        self.micro = min(cfg.trainer.micro_batch_size or self.rank_batch, self.rank_batch)
        if self.rank_batch % self.micro:
            raise ConfigError(f"trainer.micro_batch_size ({self.micro}) must divide the per-process batch "
                              f"({self.rank_batch} = trainer.batch_size {b} / {d.world_size} processes)")
        self.accum = self.rank_batch // self.micro
        self.total = self._total_steps()

        # identical initial weights on every rank: same seed before building
        seed_everything(cfg.trainer.seed)
        set_tf32(self.device, cfg.trainer.tf32)
        self.layout = resolve_channels_last(cfg.trainer.channels_last, self.device)
        self.G = build_generator(self.parts).to(self.device)
        self.D = build_discriminator(self.parts).to(self.device)
        if cfg.trainer.stable_start:  # no random draws: the RNG streams are the official recipe's either way
            normalise_spectral_weights(self.D)
        apply_memory_layout(self.G, self.layout), apply_memory_layout(self.D, self.layout)
        self.method = build_method(self.parts)
        if hasattr(self.method, "merge_d_calls"):
            self.method.merge_d_calls = cfg.trainer.merge_d_calls
        for term in self.method.terms:
            term.to(self.device)
        self._contracts = first_step_contracts(self.parts, self.method, self.D)  # checked on the first step only
        self._eval_plan = self._plan_evaluation() if cfg.eval.every > 0 else None  # before step 1
        self.ema = EMA(self.G, cfg.trainer.ema_decay, cfg.trainer.ema_warmup) if cfg.trainer.ema_decay is not None else None
        oc = cfg.optim
        betas = (float(oc.beta1), float(oc.beta2))
        # trainable parameters only (a frozen backbone gets no optimiser state), in the modules' own lr groups
        self.opt_g = make_adam(param_groups(self.G, oc.lr_g), oc.lr_g, betas, oc.implementation, self.device)
        self.opt_d = make_adam(param_groups(self.D, oc.lr_d), oc.lr_d, betas, oc.implementation, self.device)
        self.sched_g = make_scheduler(self.opt_g, oc.schedule, self.total, oc.decay_start)
        #: the gradient-norm clip: the user's optim.grad_clip, else the stable start's (None: no clipping)
        self.grad_clip = oc.grad_clip if oc.grad_clip is not None else (
            cfg.trainer.stable_start_clip if cfg.trainer.stable_start else None)
        self.sched_d = make_scheduler(self.opt_d, oc.schedule, self.total, oc.decay_start,
                                      cfg.trainer.stable_start_steps if cfg.trainer.stable_start else 0)
        self.scaler_g = make_scaler(cfg.trainer.precision, self.device)
        self.scaler_d = make_scaler(cfg.trainer.precision, self.device)
        self.step = 0
        self.data_position = 0
        self.best: float | None = None
        self.best_step: int | None = None
        self.last_metrics: dict[str, float] = {}

        resumed = self._maybe_resume()
        if not resumed and cfg.trainer.init_from:
            self._init_from(cfg.trainer.init_from)

        # per-rank noise/augmentation streams (after identical init); a resume restores them below
        seed_everything(cfg.trainer.seed + 1_000_003 * d.rank)
        if resumed is not None:
            self._restore_training_state(resumed)

        G_train = dist_util.maybe_sync_batchnorm(self.G, getattr(self.G, "wants_sync_bn", False), d)
        if cfg.trainer.compile:
            backend = cfg.trainer.compile_backend
            G_train, D_train = torch.compile(G_train, backend=backend), torch.compile(self.D, backend=backend)
        else:
            D_train = self.D
        self.G_train = dist_util.wrap_ddp(G_train, d)
        self.D_train = dist_util.wrap_ddp(D_train, d)
        self.G_bare = unwrap(self.G_train)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            from gensynth.plugins import get_host

            write_text_atomic(self.run_dir / "config.json",
                              json.dumps(dump_resolved(cfg, self.provenance, get_host().versions(),
                                                         parts_summary(self.parts)), indent=1, default=str))
            self.log = MetricsLog(self.run_dir, start_step=self.step)
        else:
            self.log = None
        self.progress = ProgressDisplay(self.console, self.total, self.step, enabled=d.is_main)
        self.health = None
        if cfg.health.enabled:
            self.health = HealthMonitor(cfg.health, {"generator": self.G, "discriminator": self.D}, self.device,
                                        advice=self._collapse_advice(),
                                        pinned_level=self.method.objective.uninformative_loss(self.parts.num_classes))
        self.method.measure_outputs = self.health is not None  # no per-step figures for a monitor that is off
        if self._init_report is not None:
            self.progress.message(f"initialised from {cfg.trainer.init_from}:\n{self._init_report.summary()}")
        if resumed is not None:
            self.progress.message(f"resuming {self.run_dir} from {resumed.path.name} (step {self.step})")

    def _collapse_advice(self) -> str:
        if not self.cfg.trainer.stable_start:
            return ("the stable start (trainer.stable_start=true: drop --official-recipe), or optim.grad_clip=1.0 "
                    "(a spike fills Adam's second moment and freezes D)")
        return (f"a smaller gradient clip (optim.grad_clip={self.grad_clip / 10 if self.grad_clip else 0.1:g}), a "
                f"longer D warm-up (trainer.stable_start_steps) or a lower optim.lr_d")

    _init_report: InitReport | None = None
    _lock: RunLock | None = None
    _contracts: FirstStepContracts | None = None
    _d_trainable: list | None = None

    def _total_steps(self) -> int:
        t = self.cfg.trainer
        if t.steps is not None:
            return t.steps
        n = self.loader.epoch_length(self.cfg.data, self.spec, self.cfg.data.split)
        return max(1, math.ceil(t.epochs * max(1, n // t.batch_size)))

    # ------------------------------------------------------------------------------ resume / init
    def _maybe_resume(self) -> Checkpoint | None:
        if self.dist.is_main:  # this trainer holds the run lock: what an interrupted save left behind can go
            remove_interrupted_writes(self.ckpt_root)
        has_any = bool(list_checkpoints(self.ckpt_root))
        if self.resume_mode is True and not has_any:
            raise CheckpointError(f"--resume: no checkpoint in {self.ckpt_root}")
        if not has_any or self.resume_mode is False:
            if has_any and self.resume_mode is False:
                raise CheckpointError(f"run directory {self.run_dir} already holds checkpoints; choose another "
                                      f"--run-dir or resume it")
            return None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ckpt = load_checkpoint(self.run_dir)
        for w in caught:  # once, from the main process (the CLI shows it as one line)
            if self.dist.is_main:
                warnings.warn(w.message, w.category, stacklevel=2)
        self._check_resume_config(ckpt)
        self._load_weights(ckpt)
        return ckpt

    def _check_resume_config(self, ckpt: Checkpoint) -> None:
        old = flatten(canonical_options(ckpt.config()).model_dump(mode="json"))  # flat or per-part option keys
        new = flatten(canonical_options(self.cfg).model_dump(mode="json"))
        # a key the checkpoint's configuration lacks was added to gensynth after it was written: not compared
        changed = sorted(k for k in set(old) | set(new) if k in old and old.get(k) != new.get(k)
                         and not any(k == f or (f.endswith(".") and k.startswith(f)) for f in _RESUME_FREE))
        if changed:
            diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:6])
            raise ConfigError(f"cannot resume {ckpt.path}: the configuration differs from the one it was trained "
                              f"with ({diffs}); use another --run-dir, or --init-from to fine-tune from it")
        # allowed, but the data stream is split differently: the run continues, not bit-for-bit as uninterrupted
        moved = []
        if old.get("data.num_workers") != new.get("data.num_workers"):
            moved.append(f"data.num_workers {old.get('data.num_workers')} -> {new.get('data.num_workers')}")
        if ckpt.meta.get("world_size", self.dist.world_size) != self.dist.world_size:
            moved.append(f"processes {ckpt.meta.get('world_size')} -> {self.dist.world_size}")
        if moved and self.dist.is_main:
            (self.console or Console(stderr=True)).print(
                f"[yellow]warning:[/] resuming with {', '.join(moved)}: training continues from step {ckpt.step}, "
                f"but the order of samples from here on differs from an uninterrupted run", highlight=False)

    def _load_weights(self, ckpt: Checkpoint) -> None:
        from gensynth.api import load_state_into

        load_state_into(self.G, ckpt.state("generator"), what=str(ckpt.path / "generator.safetensors"))
        if self.ema is not None:
            ema_state = ckpt.state("generator_ema") or ckpt.state("generator")
            load_state_into(self.ema.module, ema_state, what=str(ckpt.path / "generator_ema.safetensors"))
        d_state = ckpt.state("discriminator")
        if d_state is None:
            raise CheckpointError(f"cannot resume from {ckpt.path}: it holds no discriminator.safetensors")
        load_state_into(self.D, d_state, what=str(ckpt.path / "discriminator.safetensors"))

    def _restore_training_state(self, ckpt: Checkpoint) -> None:
        ts = ckpt.training_state()
        if ts is None:
            raise CheckpointError(f"cannot resume from {ckpt.path}: it holds no training_state.pt")
        where = ckpt.path / "training_state.pt"
        missing = [k for k in _TRAINING_STATE_KEYS if not isinstance(ts, dict) or k not in ts]
        if missing:
            raise CheckpointError(f"cannot resume from {where}: it lacks {', '.join(missing)} (not a complete "
                                  f"gensynth training state); resume from another checkpoint or use --init-from")
        try:
            self.step = int(ts["step"])
            self.opt_g.load_state_dict(ts["optim_g"])
            self.opt_d.load_state_dict(ts["optim_d"])
            self.sched_g.load_state_dict(ts["sched_g"])
            self.sched_d.load_state_dict(ts["sched_d"])
            self.scaler_g.load_state_dict(ts["scaler_g"])
            self.scaler_d.load_state_dict(ts["scaler_d"])
        except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as exc:
            raise CheckpointError(f"cannot resume from {where}: its optimiser/schedule state does not fit this "
                                  f"run ({type(exc).__name__}: {' '.join(str(exc).split())})") from None
        if self.ema is not None and "ema" in ts:
            self.ema.load_state_dict(ts["ema"])
        if self.ema is not None and ts.get("ema_unrefreshed"):  # the EMA as training left it, before its BN refresh
            restore_entries(self.ema.module, ts["ema_unrefreshed"], str(ckpt.path / "training_state.pt"))
        self.best, self.best_step = ts.get("best"), ts.get("best_step")
        ranks = ts.get("ranks", [])
        if len(ranks) == self.dist.world_size:
            mine = ranks[self.dist.rank]
            restore_rng(mine["rng"], self.device)
            self.data_position = int(mine["data_position"])
            owners = self._bn_owners()
            for name, entries in (mine.get("bn") or {}).items():
                if name in owners:
                    restore_entries(owners[name], entries, str(where))
        else:  # a different number of processes: continue from the same step, re-seeded
            self.data_position = self.step * self.accum
            seed_everything(self.cfg.trainer.seed + 1_000_003 * self.dist.rank + self.step)

    def _init_from(self, path: str) -> None:
        ckpt = load_checkpoint(path)
        report = InitReport()
        load_matching(self.G, ckpt.state("generator"), "generator", report)
        if self.ema is not None:
            src = ckpt.state("generator_ema") or ckpt.state("generator")
            load_matching(self.ema.module, src, "generator_ema", report)
        d_state = ckpt.state("discriminator")
        if d_state is not None:
            load_matching(self.D, d_state, "discriminator", report)
        self._init_report = report

    # ------------------------------------------------------------------------------ data
    def _conditions(self, batch, sample_cond_only: bool = False):
        with_edges = bool(getattr(self.G, "uses_instance_edges", False))
        real, cond = self.loader.to_condition(batch, self.parts.num_classes, self.device, with_edges=with_edges,
                                              dontcare_last=self.parts.dontcare_last,
                                              dontcare=self.spec.dontcare)
        if getattr(self.G, "uses_style_image", False) and cond.style_image is None:
            cond.style_image = real
        if self.layout == "nhwc":
            real, cond = real.contiguous(memory_format=torch.channels_last), cond.to_memory_format(torch.channels_last)
        return real, cond

    def _train_iter(self) -> Iterator:
        return self.loader.train_batches(self.cfg.data, self.spec, batch_size=self.micro, rank=self.dist.rank,
                                         world_size=self.dist.world_size, seed=self.cfg.trainer.seed,
                                         start_batch=self.data_position)

    def _next_micro_batches(self, it) -> list:
        out = []
        with isolated_rng(self.device):
            for _ in range(self.accum):
                out.append(self._conditions(next(it)))
                self.data_position += 1
        return out

    # ------------------------------------------------------------------------------ the step
    def _record(self, losses: dict[str, torch.Tensor]) -> None:
        for name, value in losses.items():
            v = value.detach().float()
            self._last_losses[name] = v
            if name not in self._sums:
                self._sums[name] = torch.zeros((), device=self.device)
                self._bad[name] = torch.zeros((), device=self.device)
            self._sums[name] += v / self.accum
            self._bad[name] = torch.maximum(self._bad[name], (~torch.isfinite(v)).float())

    def _optim_step(self, opt, scaler, params) -> None:
        clip = self.grad_clip
        if clip is not None:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, clip)
        scaler.step(opt)
        scaler.update()

    def _accumulate(self, losses_fn, wrapped, scaler, micros: list) -> None:
        """Backward of ``losses_fn`` summed over the micro-batches (DDP gradients synchronised on the last one)."""
        prec, dev, n = self.cfg.trainer.precision, self.device, len(micros)
        G, D, checks = self.G_train, self.D_train, self._contracts
        if checks is not None:  # the parts' contracts, on the first step of this process only (host syncs)
            G, D = checks.generator(G), checks.discriminator(D)
        for i, (real, cond) in enumerate(micros):
            last = not self.dist.enabled or i == n - 1
            with contextlib.nullcontext() if last else wrapped.no_sync():
                with autocast(prec, dev):
                    losses = losses_fn(G, D, real, cond, self.step)
                if checks is not None:
                    checks.losses(losses)
                self._record(losses)
                scaler.scale((sum(losses.values()) / n).float()).backward()

    def _train_step(self, micros: list) -> None:
        # --- G step: D frozen (only the parameters it trains; frozen parts stay frozen)
        if self._d_trainable is None:
            self._d_trainable = [p for p in self.D.parameters() if p.requires_grad]
        if self.health is not None:
            self.method.measure_images = self.health.wants_images(self.step + 1)
        for p in self._d_trainable:
            p.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        self._accumulate(self.method.g_losses, self.G_train, self.scaler_g, micros)
        for p in self._d_trainable:
            p.requires_grad_(True)
        self._optim_step(self.opt_g, self.scaler_g, self.G.parameters())
        self.opt_g.zero_grad(set_to_none=True)  # G's gradients are not held through the D step (memory)
        # --- D step, same batch
        self._accumulate(self.method.d_losses, self.D_train, self.scaler_d, micros)
        self._optim_step(self.opt_d, self.scaler_d, self.D.parameters())
        self.opt_d.zero_grad(set_to_none=True)  # nor D's through the next G step
        self._contracts = None
        if self.ema is not None:
            self.ema.update(self.G)
        self.sched_g.step()
        self.sched_d.step()
        self.step += 1
        self._refreshed_at, self._refreshed = None, None
        if self.health is not None:
            self.health.after_step(self.method.stats)

    # ------------------------------------------------------------------------------ checks and logs
    def _sync_losses(self) -> dict[str, float]:
        """All-reduce the device-side loss sums and non-finite flags; raise on a non-finite loss."""
        names = sorted(self._sums)
        steps = self.step - self._window_start
        if not names or steps <= 0:
            return {}
        vec = torch.stack([self._sums[k] for k in names] + [self._bad[k] for k in names])
        dist_util.all_reduce_sum(vec, self.dist)
        vec = vec.cpu()
        bad = [k for k, f in zip(names, vec[len(names):].tolist()) if f > 0]
        if bad:
            last = read_pointer(self.ckpt_root, LATEST)
            where = f"the last good checkpoint is {last}" if last is not None else "no checkpoint was saved yet"
            first = self._checked_clean + 1
            when = f"at step {first}" if first == self.step else f"between step {first} and step {self.step}"
            raise NonFiniteLossError(
                f"loss {', '.join(repr(b) for b in bad)} became non-finite (NaN or inf) {when}; "
                f"training stopped without saving; {where}. "
                f"Try a lower learning rate (optim.lr_g / optim.lr_d), --precision fp32, or optim.grad_clip")
        self._checked_clean = self.step
        means = {k: float(v) / (steps * self.dist.world_size) for k, v in zip(names, vec[: len(names)].tolist())}
        for k in names:
            self._sums[k].zero_()
        self._window_start = self.step
        return means

    def _log(self) -> None:
        losses = self._sync_losses()
        now = time.perf_counter()
        steps = self.step - self._log_step
        ips = steps * self.cfg.trainer.batch_size / max(now - self._log_time, 1e-9) if steps else 0.0
        self._log_time, self._log_step = now, self.step
        values = {**losses, "lr_g": self.opt_g.param_groups[0]["lr"], "lr_d": self.opt_d.param_groups[0]["lr"],
                  "images_per_s": ips}
        if self.ema is not None:
            values["ema_decay"] = self.ema.current_decay()
        self.last_metrics.update(values)
        if self.log is not None:
            self.log.write(self.step, values)
        eta = (self.total - self.step) * self.cfg.trainer.batch_size / ips if ips > 0 else None
        self.progress.log(self.step, values, eta)

    def _check_health(self) -> None:
        """Judge the run's health (one host synchronisation); warn, or save and stop (``health.action``)."""
        def mean_over_ranks(vec):
            return dist_util.all_reduce_sum(vec, self.dist) / self.dist.world_size

        report = self.health.check(self.step, self._last_losses, mean_over_ranks)
        self._health_report(report)

    def _health_report(self, report: HealthReport, may_stop: bool = True) -> None:
        if self.log is not None:
            self.log.write(report.step, report.figures, kind="health")
        for finding in report.findings:
            self.health_findings.append(f"{finding.kind} at step {finding.step}: {finding.message}")
            if self.log is not None:
                self.log.write(report.step, {"finding": finding.kind, "message": finding.message}, kind="health")
            if may_stop and self.cfg.health.action == "stop":
                self._save()
                raise UnhealthyTrainingError(f"stopped by the health monitor (health.action=stop) at step "
                                             f"{self.step}, after saving a checkpoint in {self.ckpt_root}: "
                                             f"{finding.message}")
            self.progress.message(f"[yellow]health warning:[/] {finding.message}")

    # ------------------------------------------------------------------------------ EMA, samples, eval
    def _eval_generator(self) -> torch.nn.Module:
        """The generator used for samples, evaluation and inference: the EMA (a BN-refreshed copy of it), else G.

        The refresh works on a copy, cached for the current step: the EMA itself never sees it."""
        if self.ema is None:
            return self.G
        if self.cfg.trainer.bn_refresh_batches <= 0 or not has_batchnorm(self.ema.module):
            self.ema.module.eval()
            return self.ema.module
        if self._refreshed_at != self.step or self._refreshed is None:
            self._refreshed = None  # free the previous copy first
            with isolated_rng(self.device):
                torch.manual_seed(self.cfg.trainer.seed + 7919 + self.step + 104729 * self.dist.rank)
                # in this process (num_workers=0): a few batches do not pay for starting worker processes
                it = self.loader.train_batches(self.cfg.data, self.spec, batch_size=self.micro, rank=self.dist.rank,
                                               world_size=self.dist.world_size,
                                               seed=self.cfg.trainer.seed + 7919 + self.step, num_workers=0)
                conds = (self._conditions(next(it))[1] for _ in range(self.cfg.trainer.bn_refresh_batches))
                self._refreshed = refreshed_copy(self.ema.module, conds, self.dist)
            self._refreshed_at = self.step
        self._refreshed.eval()
        return self._refreshed

    _refreshed: torch.nn.Module | None = None

    def _sample_batch(self):
        if self._sample_cache is None:
            n = min(4, self.micro)
            batch = None
            for split in (self.cfg.data.val_split, self.cfg.data.split):
                try:
                    batch = next(iter(self.loader.eval_batches(self.cfg.data, self.spec, batch_size=n, split=split,
                                                               limit=n, num_workers=0)))
                    break
                except (GensynthError, StopIteration, FileNotFoundError):
                    continue
            if batch is None:
                return None
            self._sample_cache = (batch, *self._conditions(batch))
        return self._sample_cache

    def _samples(self) -> None:
        gen = self._eval_generator()
        if not self.dist.is_main:
            return
        with isolated_rng(self.device):
            got = self._sample_batch()
            if got is None:
                return
            batch, real, cond = got
            was = gen.training
            gen.eval()
            torch.manual_seed(self.cfg.trainer.seed)
            with torch.no_grad(), autocast(self.cfg.trainer.precision, self.device):
                fake = gen(cond).image.float()
                other = None
                if self.health is not None and getattr(gen, "noise", NoiseKind.NONE) != NoiseKind.NONE:
                    other = gen(cond).image.float()  # the same labels, the next noise draw
            gen.train(was)
            if self.ema is not None:
                self.ema.module.eval()
        if other is not None:  # warn-only: judged on rank 0, so it never stops one rank of a DDP run
            self._health_report(self.health.judge_noise(self.step, noise_dependence(fake, other)), may_stop=False)
        grid = make_grid(batch.label, fake, real, palette(self.spec.classes))
        save_png(grid, self.run_dir / "samples" / f"step_{self.step:08d}.png")
        if self.log is not None:
            self.log.image("samples", grid, self.step)

    def _plan_evaluation(self):
        """Every requirement of the periodic evaluation, checked before step 1 (ConfigError, or a warning and the
        metric skipped with eval.on_missing=skip / the default set)."""
        from gensynth.eval.requirements import plan_evaluation

        console = self.console or Console(stderr=True)

        def warn(msg: str) -> None:
            if self.dist.is_main:
                console.print(f"[yellow]warning:[/] {msg}", highlight=False)

        return plan_evaluation(self.cfg, self.parts, discriminator=self.D, device=self.device, warn=warn)

    def _evaluate(self) -> None:
        """The periodic evaluation: a metric that fails is logged (metrics.jsonl "kind": "eval_error") and dropped
        from later evaluations; any other failure is logged too, and training continues."""
        from gensynth.eval.evaluate import evaluate

        plan = self._eval_plan
        if plan is None or not plan.metrics:
            return
        gen = self._eval_generator()
        was, d_was = gen.training, self.D.training
        gen.eval()
        errors: dict[str, str] = {}
        results: dict[str, float] = {}
        try:
            with isolated_rng(self.device):
                report = evaluate(gen, self.parts, self.cfg, device=self.device, rank=self.dist.rank,
                                  world_size=self.dist.world_size, metrics=plan.metrics,
                                  tools=plan.tools(), on_error="record")
            results, errors = report.metrics, report.errors
        except Exception as exc:  # the generator, the data or a collective failed: no metric this time
            errors = {"evaluation": f"{type(exc).__name__}: {exc}"}
        finally:
            gen.train(was)
            self.D.train(d_was)
            if self.ema is not None:
                self.ema.module.eval()
        for metric, msg in errors.items():
            self.progress.message(f"[yellow]warning:[/] evaluation of {metric} failed at step {self.step} (training "
                                  f"continues{'' if metric == 'evaluation' else ' without it'}): {msg}")
            if metric in plan.metrics:
                plan.metrics.remove(metric)
                plan.skipped[metric] = msg
        if errors and self.log is not None:
            self.log.write(self.step, {"failed": sorted(errors), "errors": errors}, kind="eval_error")
        if not results:
            return
        results = {k: float(v) for k, v in (results or {}).items()}
        self.last_metrics.update({f"eval/{k}": v for k, v in results.items()})
        if self.log is not None:
            self.log.write(self.step, results, kind="eval")
        self.progress.message(f"eval step {self.step}: " + " ".join(f"{k}={v:.4g}" for k, v in results.items()))
        value = results.get(self.cfg.eval.track)
        if value is None:
            if not self._eval_warned:
                self.progress.message(f"[yellow]warning:[/] eval.track={self.cfg.eval.track!r} is not among the "
                                      f"evaluated metrics ({', '.join(results) or 'none'}); BEST is not tracked")
                self._eval_warned = True
            return
        if not math.isfinite(value):
            return
        better = self.best is None or (value < self.best if self.cfg.eval.track_mode == "min" else value > self.best)
        if better:
            self.best, self.best_step = value, self.step
            self._save(best=True)

    # ------------------------------------------------------------------------------ checkpoints
    def _training_state(self) -> dict:
        mine = {"rng": capture_rng(self.device), "data_position": self.data_position}
        if self.dist.enabled:  # each rank's own BN statistics (plain BN drifts apart per rank's data)
            mine["bn"] = {name: dist_util.bn_buffers(m) for name, m in self._bn_owners().items()}
        ranks = dist_util.all_gather_object(mine, self.dist)
        return {
            "step": self.step, "optim_g": self.opt_g.state_dict(), "optim_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {}, "best": self.best,
            "ema_unrefreshed": (entries_changed_by_refresh(self.ema.module, self._refreshed)
                                if self.ema is not None and self._refreshed is not None
                                and self._refreshed_at == self.step else {}),
            "best_step": self.best_step, "world_size": self.dist.world_size, "ranks": ranks,
        }

    def _bn_owners(self) -> dict[str, torch.nn.Module]:
        owners = {"generator": self.G, "discriminator": self.D}
        if self.ema is not None:
            owners["generator_ema"] = self.ema.module
        return owners

    def _save(self, best: bool = False) -> None:
        self._sync_losses_keep()  # never save weights produced by a non-finite loss
        ema_for_inference = self._eval_generator()  # a BN-refreshed copy of the EMA (averaged over ranks)
        modules = {"generator": self.G, "discriminator": self.D}
        if self.ema is not None:
            modules["generator_ema"] = ema_for_inference
        # saved: BN statistics averaged over ranks (the live modules keep their own: see "bn" in the training state)
        states = {name: (m.state_dict() if m is self._refreshed else dist_util.averaged_bn_state(m, self.dist))
                  for name, m in modules.items()}
        bad = [name for name, m in modules.items() if not state_is_finite(m)]
        if bad:
            raise NonFiniteLossError(f"non-finite weights in {', '.join(bad)} at step {self.step}; checkpoint not "
                                     f"saved; the last good checkpoint is {read_pointer(self.ckpt_root, LATEST)}")
        state = self._training_state()
        if self.dist.is_main and self._saved_at != self.step:
            meta = {"config": self.cfg.model_dump(mode="json"), "step": self.step, "epoch": self._epoch(),
                    "world_size": self.dist.world_size, "data_position": self.data_position,
                    "best": self.best, "best_step": self.best_step, "track": self.cfg.eval.track}
            path = save_checkpoint(self.ckpt_root / step_dir_name(self.step),
                                   models=states, meta=meta,
                                   training_state=state)
            write_pointer(self.ckpt_root, LATEST, path)
        if self.dist.is_main and best:
            write_pointer(self.ckpt_root, BEST, self.ckpt_root / step_dir_name(self.step))
        if self.dist.is_main:
            prune_checkpoints(self.ckpt_root, self.cfg.trainer.keep_last,
                              protect=[read_pointer(self.ckpt_root, BEST), read_pointer(self.ckpt_root, LATEST)])
        self._saved_at = self.step  # on every rank, so all ranks take the same branches
        dist_util.barrier(self.dist)

    def _sync_losses_keep(self) -> None:
        """Check the non-finite flags now (raises), keeping the running means for the next log line."""
        names = sorted(self._bad)
        if not names:
            return
        flags = torch.stack([self._bad[k] for k in names])
        dist_util.all_reduce_max(flags, self.dist)
        if bool((flags > 0).any()):
            self._sync_losses()  # raises with the loss names and step range
        self._checked_clean = self.step

    def _banner(self, micros: list | None) -> None:
        """The start-up summary (device, parameters, data, batch) and the measured cost of a step (rank 0 prints;
        every rank measures, so that collectives inside the models stay matched)."""
        from gensynth.train.preflight import (count_parameters, describe_device, format_bytes, format_duration,
                                              measure_step, memory_advice, processes_per_node)

        cfg, d = self.cfg, self.dist
        if d.is_main:
            try:
                samples = f"{self.loader.epoch_length(cfg.data, self.spec, cfg.data.split):,} samples"
            except Exception:  # a stream without a card: the count is unknown, training still works
                samples = "sample count unknown"
            size = "x".join(str(v) for v in micros[0][0].shape[-2:]) if micros else "?"
            self.progress.message(
                f"[bold]device[/] {describe_device(self.device, d.world_size)}   [bold]model[/] "
                f"{cfg.model.preset} (scale {cfg.model.scale or 'paper'}): G {count_parameters(self.G):,} "
                f"parameters, D {count_parameters(self.D):,}\n"
                f"[bold]data[/] {cfg.data.name} {cfg.data.split}: {samples} at {size}   [bold]batch[/] "
                f"{cfg.trainer.batch_size} = {d.world_size} process(es) x {self.accum} x {self.micro}   "
                f"[bold]steps[/] {self.step}/{self.total}", markup=True)
        if micros is None or not cfg.trainer.preflight:
            return
        try:
            est = measure_step(self.G, self.D, self.method.g_losses, self.method.d_losses, micros, self.device,
                               lambda: autocast(cfg.trainer.precision, self.device), step=self.step,
                               processes_per_node=processes_per_node())
        except Exception as exc:  # noqa: BLE001 - the first real step checks the parts and names the one at fault
            if d.is_main:
                self.progress.message(f"no estimate: the measured step failed ({type(exc).__name__}: "
                                      f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); the first training "
                                      f"step checks the parts", markup=False)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return
        self.estimate = est
        if not d.is_main:
            return
        remaining = self.total - self.step
        self.progress.message(
            f"[bold]estimate[/] (measured at batch {' and '.join(map(str, est.measured_batches))}): "
            f"{format_duration(est.seconds_per_step)} per step, {format_duration(est.run_seconds(remaining))} for "
            f"{remaining:,} steps; peak {est.memory_kind} {format_bytes(est.peak_bytes)} of "
            f"{format_bytes(est.available_bytes)}", markup=True)
        if est.exceeds_memory:
            self.progress.message(f"[yellow]warning:[/] {memory_advice(est)}", markup=True)

    estimate = None

    def _epoch(self) -> float:
        try:
            n = self.loader.epoch_length(self.cfg.data, self.spec, self.cfg.data.split)
        except Exception:
            return 0.0
        return self.step * self.cfg.trainer.batch_size / max(n, 1)

    # ------------------------------------------------------------------------------ the loop
    def _stop_requested(self, stop: StopRequest) -> str | None:
        if not self.dist.enabled:
            return stop.requested
        flag = torch.tensor([1.0 if stop.requested else 0.0], device=self.device)
        dist_util.all_reduce_max(flag, self.dist)
        return (stop.requested or "signal on another rank") if flag.item() > 0 else None

    def run(self) -> TrainResult:
        prev_det = torch.are_deterministic_algorithms_enabled()
        stop = StopRequest()
        self.log = None
        self.progress = None
        try:
            self._setup()
            return self._loop(stop)
        finally:
            try:
                stop.close()
                for model in (getattr(self, "G", None), getattr(self, "D", None)):
                    if model is not None:
                        release_gradient_buffers(model)  # the kept gradient memory is for training only
                if self.progress is not None:
                    self.progress.close()
                if self.log is not None:
                    self.log.close()
                torch.use_deterministic_algorithms(prev_det)
                if hasattr(self, "dist"):
                    dist_util.teardown(self.dist)
            finally:
                if self._lock is not None:  # also when closing the logs fails (disk full)
                    self._lock.release()

    def _loop(self, stop: StopRequest) -> TrainResult:
        t = self.cfg.trainer
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self._sums, self._bad, self._last_losses = {}, {}, {}
        self.health_findings: list[str] = []
        self._window_start = self._log_step = self._checked_clean = self.step
        self._log_time = time.perf_counter()
        self._refreshed_at = None
        self._saved_at = self.step if list_checkpoints(self.ckpt_root) else None
        self._sample_cache = None
        self._eval_warned = False
        stopped_by = None
        it = self._train_iter()
        self.G_train.train()
        self.D_train.train()
        pending = self._next_micro_batches(it) if self.step < self.total else None
        self._banner(pending)
        first = self.step + 1
        while self.step < self.total:
            micros, pending = (pending if pending is not None else self._next_micro_batches(it)), None
            started = time.perf_counter()
            self._train_step(micros)
            self.progress.advance(self.step)
            if self.step == first:
                self.progress.first_step(self.step, time.perf_counter() - started)
            s, last = self.step, self.step >= self.total
            stopped_by = self._stop_requested(stop)
            if s % t.log_every == 0 or last or stopped_by:
                self._log()
            if self.health is not None and self.health.due(s):
                self._check_health()
            if s % t.sample_every == 0 or last:
                self._samples()
            if self.cfg.eval.every > 0 and (s % self.cfg.eval.every == 0 or last):
                self._evaluate()
            if s % t.checkpoint_every == 0 or last or stopped_by:
                self._save()
            if stopped_by:
                self.progress.message(f"{stopped_by}: saved a checkpoint at step {s} in {self.ckpt_root}; "
                                      f"re-run the same command to continue")
                break
        if self._saved_at != self.step and self.step >= self.total:
            self._save()  # already complete runs re-launched: make sure the final state exists
        return TrainResult(run_dir=self.run_dir, step=self.step, metrics=dict(self.last_metrics), stopped_by=stopped_by,
                           health=list(self.health_findings), estimate=self.estimate)


def run_training(cfg: RunConfig, provenance: dict[str, str], *, console: Console | None = None,
                 resume: bool | None = None) -> TrainResult:
    """Train (or continue training) the run described by ``cfg``; return where it lives and its metrics.

    resume: None continues automatically when the run directory holds checkpoints; True requires one;
    False refuses to touch a run directory that already has checkpoints.
    """
    return Trainer(cfg, provenance, console=console, resume=resume).run()
