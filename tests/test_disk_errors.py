"""A full disk and a read-only run directory: one line naming the path and the system's reason; nothing lost.

Uses small tmpfs mounts (needs root, as on the project's machines and CI; skipped elsewhere)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
import torch

from gensynth.checkpoint import load_checkpoint, read_pointer, save_checkpoint
from gensynth.config import RunConfig
from gensynth.errors import CheckpointError

from conftest import CHILD_ENV, tiny_overrides


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a 4 MiB tmpfs; yields (mount point, remount function)."""
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")

    def remount(opts: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{opts}", str(mnt)], check=True)

    try:
        yield mnt, remount
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(directory) -> None:
    """Write until the file system is full."""
    chunk = b"\0" * (64 * 1024)
    with open(directory / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
    with open(directory / "filler2", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass


def test_save_checkpoint_on_a_full_disk_names_the_path(tmpfs):
    mnt, _ = tmpfs
    meta = {"config": RunConfig().model_dump(mode="json"), "step": 1}
    first = save_checkpoint(mnt / "checkpoints" / "step_00000001", models={"generator": {"w": torch.ones(8)}},
                            meta=meta)
    _fill(mnt)
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(mnt / "checkpoints" / "step_00000002", models={"generator": {"w": torch.ones(200_000)}},
                        meta={**meta, "step": 2}, training_state={"step": 2})
    msg = str(err.value)
    assert msg.startswith(f"cannot write checkpoint {mnt / 'checkpoints' / 'step_00000002'}")
    assert "No space left on device" in msg and "\n" not in msg
    assert sorted(p.name for p in (mnt / "checkpoints").iterdir()) == ["step_00000001"]  # no half checkpoint left
    assert load_checkpoint(first).step == 1


def _env():
    env = {**os.environ, **CHILD_ENV}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    return env


def _train_args(overrides):
    args = []
    for k, v in overrides.items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    return [sys.executable, "-m", "gensynth", "train", *args]


@pytest.mark.slow
def test_disk_full_during_training_is_one_line_and_keeps_the_last_checkpoint(tmpfs, tiny_cache):
    mnt, _ = tmpfs
    run = mnt / "run"
    overrides = tiny_overrides(run, tiny_cache, **{"trainer.steps": 100000, "trainer.sample_every": 100000,
                                                    "trainer.log_every": 1})
    proc = subprocess.Popen(_train_args(overrides), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 120
        while read_pointer(run / "checkpoints") is None:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline
            time.sleep(0.05)
        _fill(mnt)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and str(run) in errors[0], err[-3000:]
    (mnt / "filler").unlink()
    assert load_checkpoint(run).step >= 3  # the last good checkpoint is intact
    assert not (run / "run.lock").exists()


def test_read_only_run_directory_is_one_line(tmpfs, tiny_cache):
    mnt, remount = tmpfs
    run = mnt / "run"
    run.mkdir()
    remount("ro")
    r = subprocess.run(_train_args(tiny_overrides(run, tiny_cache)), env=_env(), capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot create the run lock {run / 'run.lock'}: Read-only file system"], r.stderr
