"""docs/datasets.md's worked example runs as written (with fewer steps), and the small things a new user hits
(issue 20): flat folder layouts, several cards in one folder, unreachable hosts, sizes checked before any data is
converted, key suggestions from the same section, a clone named gensynth in the current folder."""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from gensynth.cli.main import cli
from gensynth.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]


def _make_example(root: Path, train: int = 8, val: int = 4) -> Path:
    spec = importlib.util.spec_from_file_location("make_dataset", ROOT / "examples" / "folder-dataset" / "make_dataset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.write(root, train, val, 32)
    return root


def _invoke(args: list[str]):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_the_worked_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENSYNTH_CACHE", str(tmp_path / "cache"))
    data = _make_example(tmp_path / "my-data")
    assert {p.name for p in (data / "labels" / "train").iterdir()} == {f"train_{k:04d}.png" for k in range(8)}
    out = _invoke(["datasets", "preview", "folder", "--data-root", str(data), "--out", "preview.png", "--num", "2"])
    assert "wrote 2 samples to preview.png" in out.output and (tmp_path / "preview.png").exists()
    _invoke(["train", "--model", "oasis", "--data", "folder", "--data-root", str(data), "--size", "32",
             "--scale", "tiny", "--steps", "2", "--run-dir", "runs/my-data", "--set", "trainer.bn_refresh_batches=1",
             "--set", "data.num_workers=0"])
    cfg = json.loads((tmp_path / "runs" / "my-data" / "config.json").read_text())["config"]
    assert cfg["data"]["size"] == [32, 32] and cfg["model"]["scale"] == "tiny"
    out = _invoke(["generate", "--checkpoint", "runs/my-data", "--labels", str(data / "labels" / "val"),
                   "--out", "out", "--samples", "2"])
    assert "wrote 8 images for 4 label maps" in out.output
    assert len(list((tmp_path / "out").glob("val_*_01.png"))) == 4


def test_flat_folder_layout_warns_and_a_missing_split_folder_is_an_error(tmp_path):
    from gensynth.plugins import get_host

    data = _make_example(tmp_path / "d")
    spec = get_host().registry("datasets").get("folder").for_root(data)
    assert len(spec.list_raw(data, "train")) == 8 and len(spec.list_raw(data, "val")) == 4
    (data / "images" / "val").rename(data / "images" / "validation")
    with pytest.raises(DataError, match=r"images: no val/ folder \(split folders here: train, validation\)"):
        spec.list_raw(data, "val")
    flat = tmp_path / "flat"
    (flat / "images").mkdir(parents=True)
    (flat / "labels").mkdir()
    (flat / "classes.yaml").write_text((data / "classes.yaml").read_text())
    for f in (data / "images" / "train").glob("*.jpg"):
        (flat / "images" / f.name).write_bytes(f.read_bytes())
    for f in (data / "labels" / "train").glob("*.png"):
        (flat / "labels" / f.name).write_bytes(f.read_bytes())
    flat_spec = get_host().registry("datasets").get("folder").for_root(flat)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = flat_spec.list_raw(flat, "val")
    assert len(items) == 8
    assert any("has no split folders (images/train, images/val): the same samples serve as the val split"
               in str(w.message) for w in caught)


def test_inspect_reads_every_card_or_one_split(tmp_path):
    data = _make_example(tmp_path / "d", train=4, val=2)
    shards = tmp_path / "shards"
    for split in ("train", "val"):
        _invoke(["datasets", "convert", "folder", "--source", str(data), "--split", split, "--out", str(shards)])
    out = _invoke(["datasets", "inspect", str(shards)]).output
    assert "ok: train: 1 shard(s) match the card" in out and "ok: val: 1 shard(s) match the card" in out
    out = _invoke(["datasets", "inspect", str(shards), "--split", "val"]).output
    assert "ok: val" in out and "ok: train" not in out
    res = CliRunner().invoke(cli, ["datasets", "inspect", str(shards), "--split", "test"])
    assert res.exit_code == 2 and "no card of split 'test' (cards here: train, val)" in res.output
    res = CliRunner().invoke(cli, ["datasets", "inspect", "http://127.0.0.1:9/shards"])
    assert res.exit_code == 2 and "an HTTP server cannot be listed; pass a card's URL" in res.output


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_storage_is_named_as_such(monkeypatch):
    pytest.importorskip("s3fs")
    from gensynth.data import openers

    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(DataError, match=r"cannot reach the storage of s3://bucket/shards/demo-train.card.json: .*"
                                        r"Check the network and the endpoint \(FSSPEC_S3_ENDPOINT_URL"):
        openers.exists("s3://bucket/shards/demo-train.card.json")
    assert openers.unreachable(ConnectionRefusedError(111, "refused"))
    assert not openers.unreachable(FileNotFoundError("no such key"))


def test_a_size_the_models_cannot_take_fails_before_any_data_is_converted(tmp_path):
    from gensynth.config import resolve
    from gensynth.train.trainer import run_training

    cache = tmp_path / "cache"
    cfg, prov = resolve({"data.name": "demo", "data.size": "36x36", "data.cache_dir": str(cache),
                         "trainer.run_dir": str(tmp_path / "run"), "trainer.steps": 1})
    with pytest.raises(ConfigError, match=r"num_res_blocks=4 needs label maps whose height and width are multiples "
                                          r"of 8, got 36x36"):
        run_training(cfg, prov)
    cfg, prov = resolve({"model.preset": "spade", "data.name": "demo", "data.size": "40x40",
                         "data.cache_dir": str(cache), "trainer.run_dir": str(tmp_path / "run2")})
    with pytest.raises(ConfigError, match=r"data.size 40x40: the SPADE generator .* must be a multiple of 32"):
        run_training(cfg, prov)
    assert not cache.exists() or not any(cache.rglob("*.tar"))  # nothing was converted


@pytest.mark.parametrize("key, hint", [
    ("eval.metric", "Did you mean 'eval.metrics'?"), ("trainer.step", "Did you mean 'trainer.steps'?"),
    ("eval.bogus", "Keys of section 'eval': every, metrics"), ("modl.preset", "Did you mean 'model.preset'?"),
])
def test_unknown_keys_suggest_keys_of_the_same_section_first(key, hint):
    from gensynth.config import check_key

    with pytest.raises(ConfigError) as info:
        check_key(key)
    assert hint in str(info.value)
    assert ("Known keys:" in str(info.value)) == (key == "modl.preset")  # the whole list only for unknown sections


def _editable_install() -> bool:
    import gensynth

    return Path(gensynth.__file__).resolve().parent == (ROOT / "gensynth").resolve() and not any(
        "site-packages" in str(p) for p in [Path(gensynth.__file__)])


@pytest.mark.skipif(not _editable_install(), reason="only an editable install can be shadowed by a clone")
def test_a_clone_named_gensynth_in_the_current_folder_is_named_in_the_error(tmp_path):
    (tmp_path / "gensynth").symlink_to(ROOT, target_is_directory=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for code in ("from gensynth.api import load_model", "import gensynth.train.trainer"):
        res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                             timeout=120)
        assert res.returncode != 0
        assert f"the folder {tmp_path / 'gensynth'} (a clone of gensynth's repository?) shadows the installed " \
               f"gensynth package" in res.stderr, res.stderr[-2000:]
        assert "cannot import name" not in res.stderr


def test_nproc_launches_the_gensynth_command_beside_this_python():
    from gensynth.cli.train_cmd import _entry_point

    args = _entry_point()
    script = Path(sys.executable).parent / "gensynth"
    if script.exists():
        assert args == ["--no-python", str(script)]
    else:
        assert args == ["--module", "gensynth"]
