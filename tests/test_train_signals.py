"""Runs killed at awkward moments: SIGTERM saves and exits cleanly; kill -9 + resume equals an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from gensynth.checkpoint import list_checkpoints, load_checkpoint, read_pointer

from conftest import CHILD_ENV, tiny_overrides

pytestmark = pytest.mark.slow


def _set_args(overrides: dict) -> list[str]:
    args = []
    for k, v in overrides.items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    return args


def _env():
    env = {**os.environ, **CHILD_ENV}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    return env


def _wait_for(predicate, proc, timeout=120.0):
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"child exited early ({proc.returncode}): {err[-3000:]}")
        assert time.time() < deadline, "timed out waiting for the child"
        time.sleep(0.05)


def test_sigterm_saves_checkpoint_and_exits_cleanly(tmp_path, tiny_cache):
    run = tmp_path / "run"
    overrides = tiny_overrides(run, tiny_cache, **{"trainer.steps": 100000, "trainer.checkpoint_every": 100000,
                                                    "trainer.sample_every": 100000})
    proc = subprocess.Popen([sys.executable, "-m", "gensynth", "train", *_set_args(overrides)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        metrics = run / "metrics.jsonl"
        _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, proc)
        assert list_checkpoints(run / "checkpoints") == []
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "stopped by SIGTERM" in out
    ckpts = list_checkpoints(run / "checkpoints")
    assert len(ckpts) == 1 and read_pointer(run / "checkpoints") == ckpts[0]
    ck = load_checkpoint(run)
    assert ck.step >= 4 and ckpts[0].name == f"step_{ck.step:08d}"
    assert ck.training_state()["step"] == ck.step and ck.meta["data_position"] == ck.step
    last_logged = [json.loads(line) for line in metrics.read_text().splitlines()][-1]
    assert last_logged["step"] == ck.step  # the stop step was logged too


_RESUME_AND_REFERENCE = textwrap.dedent("""
    import json, os, sys
    from rich.console import Console
    from gensynth.config import resolve
    from gensynth.train.trainer import run_training
    resumed, reference = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    quiet = Console(file=open(os.devnull, "w"))
    for o in (resumed, reference):
        cfg, prov = resolve(o)
        print(run_training(cfg, prov, console=quiet).step)
""")


def test_kill_9_then_resume_equals_uninterrupted(tmp_path, tiny_cache):
    run = tmp_path / "run"
    long = tiny_overrides(run, tiny_cache, **{"trainer.steps": 100000})
    proc = subprocess.Popen([sys.executable, "-m", "gensynth", "train", *_set_args(long)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: read_pointer(run / "checkpoints") is not None, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(run).step
    assert killed_at in (3, 6)
    # same command with 6 steps continues the killed run; the reference trains 6 steps without interruption
    resumed = tiny_overrides(run, tiny_cache)
    reference = tiny_overrides(tmp_path / "ref", tiny_cache)
    done = subprocess.run([sys.executable, "-c", _RESUME_AND_REFERENCE, json.dumps(resumed), json.dumps(reference)],
                          env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["6", "6"]
    a, b = load_checkpoint(run), load_checkpoint(tmp_path / "ref")
    assert a.step == b.step == 6
    for name in ("generator", "generator_ema", "discriminator"):
        sa, sb = a.state(name), b.state(name)
        for k in sb:
            assert torch.equal(sa[k], sb[k]), f"{name}.{k} differs after kill -9 + resume"


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_signal_then_resume_equals_uninterrupted(tmp_path, tiny_cache, signame):
    """A signal at a step that is not a checkpoint step saves (with a BN-refreshed EMA for inference); resuming
    to N steps gives bit for bit the weights, EMA included, of N uninterrupted steps. The refresh must not touch
    the EMA that training continues from (it also advances the EMA's spectral-norm vectors)."""
    run = tmp_path / "run"
    sparse = {"trainer.checkpoint_every": 100000, "trainer.sample_every": 100000, "trainer.log_every": 1}
    long = tiny_overrides(run, tiny_cache, **{**sparse, "trainer.steps": 100000})
    proc = subprocess.Popen([sys.executable, "-m", "gensynth", "train", *_set_args(long)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        metrics = run / "metrics.jsonl"
        _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 3, proc)
        proc.send_signal(getattr(signal, signame))
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert f"stopped by {signame}" in out
    stopped_at = load_checkpoint(run).step
    assert stopped_at >= 3
    assert load_checkpoint(run).training_state()["ema_unrefreshed"]  # the refresh changed BN stats and SN vectors
    total = stopped_at + 3
    resumed = tiny_overrides(run, tiny_cache, **{**sparse, "trainer.steps": total})
    reference = tiny_overrides(tmp_path / "ref", tiny_cache, **{**sparse, "trainer.steps": total})
    done = subprocess.run([sys.executable, "-c", _RESUME_AND_REFERENCE, json.dumps(resumed), json.dumps(reference)],
                          env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    # (a first conversion of the demo shards may print its progress before the two step counts)
    assert [line for line in done.stdout.split() if line.isdigit()] == [str(total), str(total)]
    a, b = load_checkpoint(run), load_checkpoint(tmp_path / "ref")
    assert a.step == b.step == total
    for name in ("generator", "generator_ema", "discriminator"):
        sa, sb = a.state(name), b.state(name)
        assert set(sa) == set(sb)
        for k in sb:
            assert torch.equal(sa[k], sb[k]), f"{name}.{k} differs after {signame} at step {stopped_at} + resume"
    ua, ub = a.training_state()["ema_unrefreshed"], b.training_state()["ema_unrefreshed"]
    assert set(ua) == set(ub) and all(torch.equal(ua[k], ub[k]) for k in ub)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the worker processes")
def test_ddp_signal_then_resume_equals_uninterrupted(tmp_path, tiny_cache):
    """Two processes (gloo): SIGTERM to rank 1 at some step, resume, and compare with an uninterrupted run.
    Saving averages BN statistics over ranks only in the saved weights; each rank keeps (and gets back) its own."""
    from test_train_ddp import _children, _rank_of

    def torchrun(overrides):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--module",
                "gensynth", "train", *_set_args(overrides)]

    run = tmp_path / "run"
    sparse = {"trainer.checkpoint_every": 100000, "trainer.sample_every": 100000, "trainer.log_every": 1}
    proc = subprocess.Popen(torchrun(tiny_overrides(run, tiny_cache, **{**sparse, "trainer.steps": 100000})),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        metrics = run / "metrics.jsonl"
        _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 3, proc, timeout=180)
        rank1 = [p for p in _children(proc.pid) if _rank_of(p) == 1]
        assert len(rank1) == 1
        os.kill(rank1[0], signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    stopped_at = load_checkpoint(run).step
    total = stopped_at + 2
    for run_dir in (run, tmp_path / "ref"):
        done = subprocess.run(torchrun(tiny_overrides(run_dir, tiny_cache, **{**sparse, "trainer.steps": total})),
                              env=_env(), capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
    a, b = load_checkpoint(run), load_checkpoint(tmp_path / "ref")
    assert a.step == b.step == total
    for name in ("generator", "generator_ema", "discriminator"):
        sa, sb = a.state(name), b.state(name)
        for k in sb:
            assert torch.equal(sa[k], sb[k]), f"{name}.{k} differs after a signal at step {stopped_at} + resume"
    ra, rb = a.training_state()["ranks"], b.training_state()["ranks"]
    for rank in (0, 1):
        for name, entries in rb[rank]["bn"].items():
            for k, v in entries.items():
                assert torch.equal(ra[rank]["bn"][name][k], v), f"rank {rank} {name}.{k} differs"
