"""Two real processes (torch.distributed.run, gloo, CPU) train a tiny OASIS a few steps."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import CHILD_ENV, tiny_overrides

pytestmark = pytest.mark.slow

_CHILD = textwrap.dedent("""
    import json, os, sys
    import torch
    import gensynth.data.loader as L
    from gensynth.config import resolve
    from gensynth.train import trainer as T

    overrides, out_dir = json.loads(sys.argv[1]), sys.argv[2]
    rank = int(os.environ["RANK"])
    seen = []
    real_train_batches = L.train_batches
    def observed(*a, **k):
        for batch in real_train_batches(*a, **k):
            if k.get("seed") == overrides["trainer.seed"]:  # the training stream (not the BN refresh's)
                seen.extend(batch.keys)
            yield batch
    L.train_batches = observed

    captured = {}
    real_run = T.Trainer._loop
    def loop(self, stop):
        result = real_run(self, stop)
        captured["G"] = {k: v.clone() for k, v in self.G.state_dict().items()}
        captured["D"] = {k: v.clone() for k, v in self.D.state_dict().items()}
        captured["EMA"] = {k: v.clone() for k, v in self.ema.module.state_dict().items()}
        captured["ddp"] = type(self.G_train).__name__
        return result
    T.Trainer._loop = loop
    cfg, prov = resolve(overrides)
    result = T.run_training(cfg, prov)
    torch.save({"keys": seen, "step": result.step, **captured}, os.path.join(out_dir, f"rank{rank}.pt"))
""")


def test_two_processes_gloo(tmp_path, tiny_cache):
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(run_dir, tiny_cache, **{"trainer.steps": 4, "trainer.checkpoint_every": 2,
                                                       "trainer.sample_every": 4, "trainer.seed": 7,
                                                       "trainer.micro_batch_size": 1})  # accumulation: no_sync
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, **CHILD_ENV, "GENSYNTH_TEST_CHILD": "1"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script), json.dumps(overrides), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["ddp"] == r1["ddp"] == "DistributedDataParallel"
    assert r0["step"] == r1["step"] == 4
    # identical weights on every rank, and training did change them; BN running statistics are each rank's own
    # (plain BN under DDP sees that rank's data): the checkpoint holds their average, and each rank's own values
    # in its training state
    def bn_stat(k):
        return k.endswith(("running_mean", "running_var"))

    for part in ("G", "D", "EMA"):
        assert r0[part].keys() == r1[part].keys()
        for k in r0[part]:
            if not bn_stat(k):
                assert torch.equal(r0[part][k], r1[part][k]), f"{part}.{k} differs between ranks"
    assert any(not torch.equal(r0["G"][k], r1["G"][k]) for k in r0["G"] if bn_stat(k))
    from gensynth.checkpoint import load_checkpoint

    ck = load_checkpoint(run_dir)
    assert ck.step == 4 and ck.meta["world_size"] == 2 and ck.meta["data_position"] == 8  # 2 micro-batches/step
    for k, v in ck.state("generator").items():
        expected = (r0["G"][k] + r1["G"][k]) / 2 if bn_stat(k) else r0["G"][k]
        assert torch.equal(v, expected), k
    per_rank = ck.training_state()["ranks"]
    for rank, r in enumerate((r0, r1)):
        for k, v in per_rank[rank]["bn"]["generator"].items():
            assert torch.equal(v, r["G"][k]), f"rank {rank} {k}"
    first = load_checkpoint(run_dir / "checkpoints" / "step_00000002").state("generator")
    assert any(not torch.equal(first[k], r0["G"][k]) for k in first if first[k].is_floating_point())
    # global batch 4 over 2 ranks: 2 samples per rank per step (2 micro-batches of 1), different on each rank
    assert len(r0["keys"]) == len(r1["keys"]) == 8
    assert not set(r0["keys"][:2]) & set(r1["keys"][:2]), "both ranks trained on the same first samples"
    # per-rank RNG states were gathered into the checkpoint and differ (different noise per rank)
    ts = ck.training_state()
    assert len(ts["ranks"]) == 2
    assert not torch.equal(ts["ranks"][0]["rng"]["torch"], ts["ranks"][1]["rng"]["torch"])
    # only rank 0 wrote: one TensorBoard file, one metrics line per logged step, one sample grid per sample step
    assert len(list((run_dir / "tb").iterdir())) == 1
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in lines if rec["kind"] == "train"] == [2, 4]
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["step_00000004.png"]


def test_cli_nproc_launches_through_torch_distributed_run(tmp_path, tiny_cache, monkeypatch):
    from click.testing import CliRunner

    from gensynth.cli.main import cli

    run_dir = tmp_path / "run"
    overrides = tiny_overrides(run_dir, tiny_cache, **{"trainer.steps": 2, "trainer.sample_every": 2})
    args = []
    for k, v in overrides.items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    for k, v in CHILD_ENV.items():
        monkeypatch.setenv(k, v)
    res = CliRunner().invoke(cli, ["train", "--nproc", "2", *args])
    assert res.exit_code == 0, res.output
    from gensynth.checkpoint import load_checkpoint

    ck = load_checkpoint(run_dir)
    assert ck.step == 2 and ck.meta["world_size"] == 2 and len(ck.training_state()["ranks"]) == 2


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the worker processes")
def test_sigterm_to_one_rank_stops_all_ranks_with_a_checkpoint(tmp_path, tiny_cache):
    import signal
    import time

    run_dir = tmp_path / "run"
    overrides = tiny_overrides(run_dir, tiny_cache, **{"trainer.steps": 100000, "trainer.checkpoint_every": 100000,
                                                       "trainer.sample_every": 100000})
    args = []
    for k, v in overrides.items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    env = {**os.environ, **CHILD_ENV}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             "--module", "gensynth", "train", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        metrics = run_dir / "metrics.jsonl"
        deadline = time.time() + 180
        while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline
            time.sleep(0.1)
        rank1 = [p for p in _children(proc.pid) if _rank_of(p) == 1]
        assert len(rank1) == 1
        os.kill(rank1[0], signal.SIGTERM)  # only rank 1 is told; rank 0 must agree through the all-reduced flag
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "stopped by signal on another rank" in out
    from gensynth.checkpoint import load_checkpoint

    ck = load_checkpoint(run_dir)
    assert ck.step >= 2 and ck.meta["world_size"] == 2 and ck.training_state()["step"] == ck.step
