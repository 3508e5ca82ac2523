"""gensynth.checkpoint: atomic save, verified load, fallback to the previous good checkpoint."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch

from gensynth.checkpoint import (CHECKSUMS, FORMAT, CheckpointWarning, list_checkpoints, load_checkpoint,
                                 prune_checkpoints, read_pointer, save_checkpoint, step_dir_name, strip_prefixes,
                                 write_checksums, write_pointer)
from gensynth.config import RunConfig
from gensynth.errors import CheckpointError, ConfigError


def _models(seed: int):
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(4, 3, generator=g)
    return {
        "generator": {"module.fc.weight": shared, "module.fc.bias": torch.randn(4, generator=g),
                      "module.norm.num_batches_tracked": torch.tensor(7)},
        "generator_ema": {"_orig_mod.fc.weight": shared[:2], "_orig_mod.fc.bias": torch.zeros(4)},
        "discriminator": {"last.weight": torch.randn(2, 2, generator=g)},
    }


def _meta(step: int):
    cfg = RunConfig.model_validate({"trainer": {"steps": 10, "batch_size": 2}, "data": {"demo_samples": 8}})
    return {"config": cfg.model_dump(mode="json"), "step": step}


def _save(root, step, seed=None):
    ckpt = save_checkpoint(root / step_dir_name(step), models=_models(step if seed is None else seed),
                           meta=_meta(step), training_state={"step": step, "rng": torch.arange(5),
                                                             "nested": {"lr": [0.1, 0.2]}})
    write_pointer(root, "LATEST", ckpt)
    return ckpt


def test_roundtrip_strips_prefixes_and_records_checksums(tmp_path):
    path = _save(tmp_path / "checkpoints", 12)
    assert path.name == "step_00000012" and path.is_dir()
    ck = load_checkpoint(path)
    assert ck.meta["format"] == FORMAT and ck.meta["step"] == 12 and ck.meta["gensynth_version"]
    assert set(ck.meta["files"]) == {"generator.safetensors", "generator_ema.safetensors",
                                     "discriminator.safetensors", "training_state.pt"}
    assert all(len(d) == 64 for d in ck.meta["files"].values())
    src = _models(12)
    g = ck.state("generator")
    assert set(g) == {"fc.weight", "fc.bias", "norm.num_batches_tracked"}
    assert torch.equal(g["fc.weight"], src["generator"]["module.fc.weight"])
    assert g["norm.num_batches_tracked"].dtype == torch.int64 and int(g["norm.num_batches_tracked"]) == 7
    ema = ck.state("generator_ema")
    assert set(ema) == {"fc.weight", "fc.bias"} and torch.equal(ema["fc.weight"], src["generator"]["module.fc.weight"][:2])
    ts = ck.training_state()
    assert ts["step"] == 12 and torch.equal(ts["rng"], torch.arange(5)) and ts["nested"]["lr"] == [0.1, 0.2]
    cfg = ck.config()
    assert isinstance(cfg, RunConfig) and cfg.trainer.steps == 10 and cfg.data.demo_samples == 8
    assert ck.state("nothing") is None
    # run directory and checkpoints/ directory both resolve to the same checkpoint; a file inside too
    assert load_checkpoint(tmp_path).path == path
    assert load_checkpoint(tmp_path / "checkpoints").path == path
    assert load_checkpoint(path / "generator.safetensors").path == path


def test_strip_prefixes_nested_wrappers():
    out = strip_prefixes({"module._orig_mod.a.b": torch.zeros(1), "c": torch.ones(1)})
    assert list(out) == ["a.b", "c"]


def test_save_rejects_bad_arguments(tmp_path):
    with pytest.raises(CheckpointError, match="must include 'generator'"):
        save_checkpoint(tmp_path / "x", models={"discriminator": {}}, meta=_meta(1))
    with pytest.raises(CheckpointError, match="meta must include 'step'"):
        save_checkpoint(tmp_path / "x", models={"generator": {}}, meta={"config": {}})
    with pytest.raises(CheckpointError, match="unknown model names \\['vae'\\]"):
        save_checkpoint(tmp_path / "x", models={"generator": {}, "vae": {}}, meta=_meta(1))
    assert not any(tmp_path.iterdir()), "a rejected save must leave nothing behind"


def test_overwrite_same_step_replaces(tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 5, seed=1)
    _save(root, 5, seed=2)
    ck = load_checkpoint(root / "step_00000005")
    assert torch.equal(ck.state("discriminator")["last.weight"], _models(2)["discriminator"]["last.weight"])
    assert [p.name for p in root.iterdir() if p.is_dir()] == ["step_00000005"]


def test_truncated_latest_falls_back_with_warning(tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 10)
    latest = _save(root, 20)
    assert read_pointer(root) == latest
    f = latest / "generator.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.warns(CheckpointWarning, match="generator.safetensors is damaged.*using .*step_00000010"):
        ck = load_checkpoint(tmp_path)
    assert ck.step == 10
    assert torch.equal(ck.state("generator")["fc.bias"], _models(10)["generator"]["module.fc.bias"])
    # naming the damaged checkpoint directly is an error naming the file
    with pytest.raises(CheckpointError, match=r"step_00000020/generator.safetensors is damaged"):
        load_checkpoint(latest)
    # verify=False skips the checksum but safetensors still refuses the truncated file, naming it
    with pytest.raises(CheckpointError, match=r"cannot read .*step_00000020/generator.safetensors"):
        load_checkpoint(latest, verify=False).state("generator")


def test_missing_meta_and_modified_bytes_fall_back(tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 1)
    mid = _save(root, 2)
    last = _save(root, 3)
    (last / "meta.json").unlink()
    ts = mid / "training_state.pt"
    raw = bytearray(ts.read_bytes())
    raw[-3] ^= 0xFF  # same length, different bytes
    ts.write_bytes(bytes(raw))
    with pytest.warns(CheckpointWarning) as rec:
        ck = load_checkpoint(tmp_path)
    assert ck.step == 1
    msg = str(rec[0].message)
    assert "meta.json is missing" in msg and "training_state.pt is damaged" in msg


def test_nothing_usable_raises(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint found in"):
        load_checkpoint(tmp_path / "run")
    only = _save(tmp_path / "run" / "checkpoints", 4)
    (only / "discriminator.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no usable checkpoint.*discriminator.safetensors is missing"):
        load_checkpoint(tmp_path / "run")
    (only / "meta.json").write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(CheckpointError, match="unsupported checkpoint format 'other/9'"):
        load_checkpoint(only)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_training_state_never_unpickles_code(tmp_path):
    ck_dir = _save(tmp_path, 1)
    torch.save({"x": _Evil()}, ck_dir / "training_state.pt")
    import hashlib

    meta = json.loads((ck_dir / "meta.json").read_text())
    meta["files"]["training_state.pt"] = hashlib.sha256((ck_dir / "training_state.pt").read_bytes()).hexdigest()
    (ck_dir / "meta.json").write_text(json.dumps(meta))
    write_checksums(ck_dir)  # a forger who also rewrites SHA256SUMS
    with pytest.raises(CheckpointError, match="cannot read .*training_state.pt"):
        load_checkpoint(ck_dir).training_state()


def test_checksums_cover_every_file_meta_json_included(tmp_path):
    ck_dir = _save(tmp_path, 1)
    sums = dict(line.split("  ")[::-1] for line in (ck_dir / CHECKSUMS).read_text().splitlines())
    assert set(sums) == {"meta.json", "generator.safetensors", "generator_ema.safetensors",
                         "discriminator.safetensors", "training_state.pt"}
    assert sums["generator.safetensors"] == load_checkpoint(ck_dir).meta["files"]["generator.safetensors"]
    # meta.json edited (a pipe: data root slipped in): damaged, naming meta.json
    meta = json.loads((ck_dir / "meta.json").read_text())
    meta["config"]["data"]["root"] = "pipe:touch x"
    (ck_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"step_00000001/meta.json is damaged: its sha256 does not match "
                                              r"SHA256SUMS"):
        load_checkpoint(ck_dir)
    write_checksums(ck_dir)
    assert load_checkpoint(ck_dir).meta["config"]["data"]["root"] == "pipe:touch x"
    # a file added after saving is not covered
    (ck_dir / "extra.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"step_00000001/extra.safetensors is not covered by .*SHA256SUMS"):
        load_checkpoint(ck_dir)
    (ck_dir / "extra.safetensors").unlink()
    # a damaged SHA256SUMS is named
    (ck_dir / CHECKSUMS).write_text("nonsense\n")
    with pytest.raises(CheckpointError, match=r"step_00000001/SHA256SUMS is damaged: line 1"):
        load_checkpoint(ck_dir)
    # checkpoints written before SHA256SUMS existed are still read with meta.json's list
    (ck_dir / CHECKSUMS).unlink()
    assert load_checkpoint(ck_dir).step == 1


def test_stored_config_never_allows_pipe(tmp_path):
    ck_dir = _save(tmp_path, 1)
    meta = json.loads((ck_dir / "meta.json").read_text())
    meta["config"]["data"].update(root="pipe:touch x", allow_pipe=True)
    (ck_dir / "meta.json").write_text(json.dumps(meta))
    write_checksums(ck_dir)
    ck = load_checkpoint(ck_dir)
    assert ck.config().data.allow_pipe is False and ck.config().data.root == "pipe:touch x"
    with pytest.raises(ConfigError, match=r"data.root 'pipe:touch x' \(from .*step_00000001/meta.json\) would run "
                                          r"a shell command"):
        ck.config_with({})
    with pytest.raises(ConfigError, match=r"from .*meta.json\) would run a shell command"):
        ck.config_with({"data.allow_pipe": True})  # the opt-in does not cover a root read from the checkpoint
    cfg = ck.config_with({"data.root": "/data/shards"})
    assert cfg.data.root == "/data/shards" and not cfg.data.allow_pipe
    cfg = ck.config_with({"data.root": "pipe:cat a.tar", "data.allow_pipe": True})
    assert cfg.data.allow_pipe and cfg.data.root == "pipe:cat a.tar"


def test_prune_keeps_last_and_best(tmp_path):
    root = tmp_path / "checkpoints"
    for s in (1, 2, 3, 4, 5):
        _save(root, s)
    (root / ".step_00000009.tmp-1-abc").mkdir()
    deleted = prune_checkpoints(root, keep_last=2, protect=[root / "step_00000002"])
    assert [p.name for p in deleted] == ["step_00000001", "step_00000003"]
    assert [p.name for p in list_checkpoints(root)] == ["step_00000002", "step_00000004", "step_00000005"]
    assert not (root / ".step_00000009.tmp-1-abc").exists()


_KILL_CHILD = textwrap.dedent("""
    import sys, time, torch
    from pathlib import Path
    import gensynth.checkpoint as C
    from gensynth.config import RunConfig
    root = Path(sys.argv[1])
    meta = {"config": RunConfig().model_dump(mode="json"), "step": 1}
    first = C.save_checkpoint(root / "step_00000001", models={"generator": {"w": torch.ones(3)}}, meta=meta,
                              training_state={"step": 1})
    C.write_pointer(root, "LATEST", first)
    real_save = torch.save
    def slow_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        (root.parent / "in_save").write_text("x")
        time.sleep(60)
    C.torch.save = slow_save
    C.save_checkpoint(root / "step_00000002", models={"generator": {"w": torch.zeros(3)}},
                      meta={**meta, "step": 2}, training_state={"step": 2})
    C.write_pointer(root, "LATEST", root / "step_00000002")
""")


def test_kill_9_during_save_leaves_previous_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, str(root)], env=env)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "in_save").exists():
            assert proc.poll() is None, "child exited before reaching the save"
            assert time.time() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert any(p.name.startswith(".step_00000002.tmp-") for p in root.iterdir()), "the save was interrupted mid-way"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the previous checkpoint is intact: no fallback warning
        ck = load_checkpoint(tmp_path)
    assert ck.step == 1 and torch.equal(ck.state("generator")["w"], torch.ones(3))
    assert ck.training_state() == {"step": 1}


def test_a_plain_weights_file_is_not_taken_for_a_checkpoint(tmp_path):
    f = tmp_path / "best_G.pth"
    torch.save({"fc.weight": torch.zeros(1)}, f)
    with pytest.raises(CheckpointError, match=r"best_G.pth is a file, not a gensynth checkpoint.*import-official"):
        load_checkpoint(f)


def test_leftovers_of_interrupted_saves_are_removed(tmp_path):
    from gensynth.checkpoint import remove_interrupted_writes

    root = tmp_path / "checkpoints"
    _save(root, 1)
    (root / ".LATEST.tmp-1a2b3c4d").write_text("step_00000002\n")
    (root / ".BEST.tmp-00000000").write_text("x")
    (root / ".step_00000002.tmp-99-abcdef12").mkdir()
    (root / ".step_00000001.old-abcdef12").mkdir()
    removed = remove_interrupted_writes(root)
    assert sorted(p.name for p in removed) == [".BEST.tmp-00000000", ".LATEST.tmp-1a2b3c4d",
                                               ".step_00000001.old-abcdef12", ".step_00000002.tmp-99-abcdef12"]
    assert sorted(p.name for p in root.iterdir()) == ["LATEST", "step_00000001"]
