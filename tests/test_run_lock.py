"""One trainer per run directory: a second one refuses naming the holder; a killed holder's lock is taken over."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from gensynth.checkpoint import load_checkpoint, read_pointer
from gensynth.train.run_lock import LOCK_FILE, RunDirBusyError, RunLock

from conftest import CHILD_ENV, tiny_overrides


def _env():
    env = {**os.environ, **CHILD_ENV}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    return env


def _train(overrides: dict, **kw) -> subprocess.Popen:
    args = []
    for k, v in overrides.items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    return subprocess.Popen([sys.executable, "-m", "gensynth", "train", *args], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(predicate, proc, timeout=120.0):
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early ({proc.returncode}): {proc.communicate()[1][-3000:]}")
        assert time.time() < deadline, "timed out waiting for the child"
        time.sleep(0.05)


@pytest.mark.slow
def test_second_trainer_refuses_then_takes_over_after_kill_9(tmp_path, tiny_cache):
    run = tmp_path / "run"
    first = _train(tiny_overrides(run, tiny_cache, **{"trainer.steps": 100000}))
    try:
        _wait_for(lambda: read_pointer(run / "checkpoints") is not None, first)
        second = _train(tiny_overrides(run, tiny_cache, **{"trainer.steps": 100000}))
        out, err = second.communicate(timeout=120)
        assert second.returncode == 2, err[-3000:]
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in err, err
        assert (f"run directory {run} is in use by another trainer: pid {first.pid} on host {socket.gethostname()}"
                in err.replace("\n", ""))
        assert first.poll() is None  # the holder is unaffected
        os.kill(first.pid, signal.SIGKILL)
        first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert (run / LOCK_FILE).exists()  # left behind by the killed trainer
    reached = load_checkpoint(run).step
    third = _train(tiny_overrides(run, tiny_cache, **{"trainer.steps": reached + 1}))
    out, err = third.communicate(timeout=180)
    assert third.returncode == 0, err[-3000:]
    assert f"took over the lock of {run} from pid {first.pid} on host {socket.gethostname()}" in \
        err.replace("\n", "")
    assert load_checkpoint(run).step == reached + 1
    assert not (run / LOCK_FILE).exists()  # released at the end


_ORPHAN = textwrap.dedent("""
    import os, sys, time
    from gensynth.train.run_lock import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    child = os.fork()
    if child == 0:  # a child that inherits the locked file, like a data worker, and outlives its parent
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1), os.dup2(null, 2)  # do not keep the test's pipes open
        time.sleep(60)
        os._exit(0)
    print(os.getpid(), child, flush=True)
    os._exit(0)  # the trainer dies without releasing
""")


def test_lock_held_by_an_orphan_of_a_dead_trainer_is_taken_over(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", _ORPHAN, str(run)], env=_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    dead_pid, orphan_pid = map(int, proc.stdout.split()[:2])
    holder = json.loads((run / LOCK_FILE).read_text())
    assert holder["pid"] == dead_pid and holder["host"] == socket.gethostname()
    # the orphan still holds the flock: a plain flock attempt would fail
    import fcntl

    fd = os.open(run / LOCK_FILE, os.O_RDONLY)
    with pytest.raises(BlockingIOError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)
    lock = RunLock(run).acquire()
    try:
        assert lock.taken_over and f"pid {dead_pid} on host {socket.gethostname()}" in lock.taken_over
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(RunDirBusyError, match=rf"in use by another trainer: pid {os.getpid()} on host"):
            RunLock(run).acquire()  # a live holder on this host: refused
    finally:
        lock.release()
        os.kill(orphan_pid, signal.SIGKILL)
    assert not (run / LOCK_FILE).exists()
    with RunLock(run) as again:
        assert again.taken_over is None  # a cleanly released lock is not "taken over"


_HOLDER = textwrap.dedent("""
    import sys, time
    from gensynth.train.run_lock import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(600)
""")


@pytest.mark.slow
def test_every_process_of_a_ddp_run_stops_when_rank_0_cannot_take_the_lock(tmp_path, tiny_cache):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], env=_env(), stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = []
        for k, v in tiny_overrides(run, tiny_cache).items():
            args += ["--set", f"{k}={json.dumps(v)}"]
        started = time.time()
        proc = subprocess.run([sys.executable, "-m", "gensynth", "train", "--nproc", "2", *args], env=_env(),
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode != 0
        err = proc.stderr.replace("\n", "")
        assert f"run directory {run} is in use by another trainer: pid {holder.pid}" in err, proc.stderr[-3000:]
        assert "rank 0 could not take the run directory's lock (see its error); this process stops too" in err
        assert time.time() - started < 200  # no process waited for rank 0 until a collective timed out
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait(timeout=30)
