"""Nothing read from a checkpoint, a dataset card or someone else's file starts a process or unpickles code.

Every reading path gets a checkpoint whose meta.json names ``"data": {"root": "pipe:touch MARKER"}``: once with
SHA256SUMS left as saved (the edit is detected as damage, naming meta.json) and once with SHA256SUMS forged to
match (nothing is executed; where data would be read, the error names data.root and meta.json).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile

import pytest
import torch
from click.testing import CliRunner

from gensynth.checkpoint import list_checkpoints, write_checksums
from gensynth.cli.main import cli
from gensynth.config import DataConfig, resolve
from gensynth.errors import ConfigError, DataError

from conftest import tiny_overrides


def _poisoned_run(tiny_run, tmp_path, marker, *, forge_checksums: bool):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    for ck in list_checkpoints(run / "checkpoints"):
        meta = json.loads((ck / "meta.json").read_text())
        meta["config"]["data"]["root"] = f"pipe:touch {marker}"
        meta["config"]["data"]["allow_pipe"] = True
        (ck / "meta.json").write_text(json.dumps(meta))
        if forge_checksums:
            write_checksums(ck)
    return run


def _labels(tmp_path):
    from PIL import Image
    import numpy as np

    path = tmp_path / "label.png"
    Image.fromarray(np.ones((32, 32), np.uint8)).save(path)
    return path


def _command(name, run, tmp_path, tiny_cache):
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    from PIL import Image

    Image.new("RGB", (32, 32), (120, 30, 200)).save(images / "a.png")
    train_args = []
    for key, value in tiny_overrides(tmp_path / "new-run", tiny_cache, **{"trainer.steps": 1}).items():
        train_args += ["--set", f"{key}={json.dumps(value)}"]
    resume_args = []
    for key, value in tiny_overrides(run, tiny_cache, **{"trainer.steps": 7}).items():
        resume_args += ["--set", f"{key}={json.dumps(value)}"]
    return {
        "evaluate": ["evaluate", "-c", str(run), "--metrics", "miou", "--device", "cpu"],
        "generate": ["generate", "-c", str(run), "-l", str(_labels(tmp_path)), "-o", str(tmp_path / "gen"),
                     "--device", "cpu"],
        "segment": ["segment", "-c", str(run), "-i", str(images), "-o", str(tmp_path / "seg"), "--device", "cpu"],
        "resume": ["train", *resume_args, "--resume"],
        "init-from": ["train", *train_args, "--init-from", str(run)],
    }[name]


PATHS = ["evaluate", "generate", "segment", "resume", "init-from"]


@pytest.mark.parametrize("path", PATHS)
def test_edited_meta_json_is_damage_naming_the_file(path, tiny_run, tiny_cache, tmp_path):
    marker = tmp_path / "executed"
    run = _poisoned_run(tiny_run, tmp_path, marker, forge_checksums=False)
    r = CliRunner().invoke(cli, _command(path, run, tmp_path, tiny_cache))
    assert not marker.exists()
    assert r.exit_code == 2, r.output
    assert "meta.json is damaged: its sha256 does not match SHA256SUMS" in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("path", PATHS)
def test_forged_checksums_still_run_nothing(path, tiny_run, tiny_cache, tmp_path):
    marker = tmp_path / "executed"
    run = _poisoned_run(tiny_run, tmp_path, marker, forge_checksums=True)
    r = CliRunner().invoke(cli, _command(path, run, tmp_path, tiny_cache))
    assert not marker.exists()
    if path == "evaluate":  # the only path that reads the run's data: refused, naming the field and the file
        assert r.exit_code == 2, r.output
        assert "data.root 'pipe:touch" in r.output and "meta.json) would run a shell command" in r.output
        # opting in on the command line does not cover a root that came from the checkpoint
        r = CliRunner().invoke(cli, _command(path, run, tmp_path, tiny_cache) + ["--set", "data.allow_pipe=true"])
        assert r.exit_code == 2 and "meta.json) would run a shell command" in r.output
        assert not marker.exists()
    else:  # generate, segment, resume (the user's own data.root) and --init-from read weights only
        assert r.exit_code == 0, r.output


class _TouchOnUnpickle:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_import_official_never_unpickles_code(tmp_path):
    from gensynth.cli.main import _add_plugin_commands

    _add_plugin_commands()
    marker = tmp_path / "executed"
    models = tmp_path / "release" / "models"
    models.mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(1), "x": _TouchOnUnpickle(marker)}, models / "best_G.pth")
    r = CliRunner().invoke(cli, ["models", "import-official", "oasis", str(tmp_path / "release"), "--data", "demo",
                                 "--out", str(tmp_path / "ck")])
    assert not marker.exists()
    assert r.exit_code == 2 and "best_G.pth" in r.output and "weights-only" in r.output
    assert not (tmp_path / "ck").exists()


def test_training_state_with_code_is_refused_on_resume(tiny_run, tiny_cache, tmp_path):
    marker = tmp_path / "executed"
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    for ck in list_checkpoints(run / "checkpoints"):
        torch.save({"step": 3, "x": _TouchOnUnpickle(marker)}, ck / "training_state.pt")
        meta = json.loads((ck / "meta.json").read_text())
        from gensynth.fileio import sha256_file

        meta["files"]["training_state.pt"] = sha256_file(ck / "training_state.pt")
        (ck / "meta.json").write_text(json.dumps(meta))
        write_checksums(ck)
    r = CliRunner().invoke(cli, _command("resume", run, tmp_path, tiny_cache))
    assert not marker.exists()
    assert r.exit_code == 2 and "training_state.pt" in r.output and "cannot read" in r.output


# ---------------------------------------------------------------------------------------------
# where a pipe: root may come from
# ---------------------------------------------------------------------------------------------
def test_pipe_root_needs_the_users_own_opt_in(tmp_path):
    with pytest.raises(ConfigError, match=r"data.root 'pipe:cat a.tar' \(from cli\) would run a shell command: "
                                          r"add data.allow_pipe=true"):
        resolve({"data.root": "pipe:cat a.tar"})
    cfg, prov = resolve({"data.root": "pipe:cat a.tar", "data.allow_pipe": True})
    assert cfg.data.allow_pipe and prov["data.allow_pipe"] == "cli"
    y = tmp_path / "mine.yaml"
    y.write_text("data:\n  root: 'pipe:cat {a,b}.tar'\n  allow_pipe: true\n")
    cfg, prov = resolve(yaml_path=str(y))
    assert cfg.data.allow_pipe and prov["data.root"] == f"yaml {y}"
    # a brace pattern that expands to a command counts as a command
    with pytest.raises(ConfigError, match="would run a shell command"):
        resolve({"data.root": "{/data/x.tar,pipe:touch y}"})
    assert resolve({"data.root": "/data/{x,pipe:y}.tar"})[0].data.root == "/data/{x,pipe:y}.tar"  # files, no command


def test_loader_refuses_pipe_without_opt_in(tmp_path):
    from gensynth.data import openers
    from gensynth.data.loader import resolve_shards
    from gensynth_datasets.demo import DemoSpec

    marker = tmp_path / "executed"
    for root in (f"pipe:touch {marker}", f"{{{tmp_path}/a.tar,pipe:touch {marker}}}"):
        with pytest.raises(DataError, match="would run a shell command"):
            resolve_shards(DataConfig(root=root), DemoSpec(), "train")
    with pytest.raises(DataError, match="would run a shell command"):
        openers.open_url(f"pipe:touch {marker}")
    assert not marker.exists()


def test_pipe_reads_shards_when_the_user_opts_in(tmp_path):
    from gensynth.data.loader import eval_batches
    from gensynth.data.shards import ShardWriter, encode_sample
    from gensynth_datasets.demo import DemoSpec

    spec = DemoSpec()
    writer = ShardWriter(tmp_path, "demo", "val", shard_size=100)
    for raw in spec.iter_raw(None, "val", samples=8, size=(16, 16), seed=0):
        enc = encode_sample(spec, raw)
        writer.write(enc.key, enc.files)
    written = writer.close()[0]
    shard = written["name"]
    data = DataConfig(name="demo", root=f"pipe:cat {tmp_path / shard}", allow_pipe=True, size=(16, 16))
    with pytest.warns(UserWarning, match="no dataset card"):
        batches = list(eval_batches(data, spec, batch_size=8, num_workers=0))
    assert written["count"] > 0 and sum(len(b) for b in batches) == written["count"]


def test_card_naming_a_command_or_path_is_refused(tmp_path):
    from gensynth.data.loader import resolve_shards
    from gensynth_datasets.demo import DemoSpec

    marker = tmp_path / "executed"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w"):
        pass
    for name in (f"pipe:touch {marker}", "../elsewhere/demo-val-000000.tar", "/abs/demo-val-000000.tar"):
        card = {"dataset": "demo", "split": "val", "num_samples": 1, "shards": [{"name": name, "count": 1}]}
        (tmp_path / "demo-val.card.json").write_text(json.dumps(card))
        with pytest.raises(DataError, match=r"demo-val.card.json: shard entry .* is not a file name beside the card"):
            resolve_shards(DataConfig(root=str(tmp_path)), DemoSpec(), "val")
    assert not marker.exists()


def test_torchscript_segmenter_named_by_a_checkpoint_is_not_loaded(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    for ck in list_checkpoints(run / "checkpoints"):
        meta = json.loads((ck / "meta.json").read_text())
        meta["config"]["eval"].update(segmenter="torchscript", segmenter_options={"path": str(tmp_path / "x.pt")})
        (ck / "meta.json").write_text(json.dumps(meta))
        write_checksums(ck)
    r = CliRunner().invoke(cli, ["evaluate", "-c", str(run), "--metrics", "miou", "--device", "cpu"])
    assert r.exit_code == 2
    assert f"eval.segmenter_options.path '{tmp_path / 'x.pt'}' (from " in r.output and "meta.json) names a " \
        "TorchScript program" in r.output


def test_resuming_with_the_users_own_pipe_opt_in(tiny_run, tiny_cache, tmp_path):
    """A checkpoint never stores the opt-in (it is dropped on reading), so giving it again is not a config change."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    args = ["train"]
    for key, value in tiny_overrides(run, tiny_cache, **{"trainer.steps": 7, "data.allow_pipe": True}).items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
