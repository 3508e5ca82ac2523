"""Errors that used to print tracebacks: unknown or absent devices, a training state missing keys."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from gensynth.checkpoint import list_checkpoints, write_checksums
from gensynth.cli.main import cli
from gensynth.devices import resolve_device
from gensynth.errors import ConfigError
from gensynth.fileio import sha256_file

from conftest import tiny_overrides


def test_devices_that_are_not_there_are_one_line_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match=r"^device 'tpu' is not a device PyTorch knows; use auto, cpu, cuda, "
                                          r"cuda:N or mps$"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match=r"^device 'xla' \(xla\) is not supported by gensynth"):
        resolve_device("xla")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"^device 'cuda': no CUDA GPU is available \(PyTorch .*\); use "
                                              r"--device cpu or auto$"):
            resolve_device("cuda")
        with pytest.raises(ConfigError, match=r"^device 'cuda:0': no CUDA GPU is available"):
            resolve_device("cuda", local_rank=0)
    else:
        n = torch.cuda.device_count()
        with pytest.raises(ConfigError, match=rf"^device 'cuda:{n}': this machine has {n} CUDA GPU"):
            resolve_device(f"cuda:{n}")


@pytest.mark.parametrize("device", ["tpu", "cuda"])
def test_cli_device_errors(device, tiny_run, tmp_path, tiny_cache):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = CliRunner().invoke(cli, ["generate", "-c", str(tiny_run.run_dir), "-l", str(tmp_path), "-o",
                                 str(tmp_path / "o"), "--device", device])
    assert r.exit_code == 2 and f"error: device '{device}" in r.output and "Traceback" not in r.output
    args = ["train"]
    for k, v in tiny_overrides(tmp_path / "run", tiny_cache, **{"trainer.device": device}).items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2 and f"error: device '{device}" in r.output, r.output
    assert not (tmp_path / "run").exists()


def test_training_state_missing_keys_names_the_file(tiny_run, tiny_cache, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    for ck in list_checkpoints(run / "checkpoints"):
        ts = torch.load(ck / "training_state.pt", weights_only=True)
        del ts["optim_d"], ts["sched_g"]
        torch.save(ts, ck / "training_state.pt")
        meta = json.loads((ck / "meta.json").read_text())
        meta["files"]["training_state.pt"] = sha256_file(ck / "training_state.pt")
        (ck / "meta.json").write_text(json.dumps(meta))
        write_checksums(ck)
    args = ["train"]
    for k, v in tiny_overrides(run, tiny_cache, **{"trainer.steps": 8}).items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    latest = list_checkpoints(run / "checkpoints")[-1]
    assert (f"error: cannot resume from {latest / 'training_state.pt'}: it lacks optim_d, sched_g (not a complete "
            f"gensynth training state)") in " ".join(r.output.split())


def test_damaged_checkpoint_warning_is_printed_once(tiny_run, tiny_cache, tmp_path):
    import os
    import subprocess
    import sys

    from conftest import CHILD_ENV

    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    f = run / "checkpoints" / "step_00000006" / "generator.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    (run / "checkpoints" / ".LATEST.tmp-deadbeef").write_text("step_00000009\n")  # left by a killed save
    args = []
    for k, v in tiny_overrides(run, tiny_cache).items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    r = subprocess.run([sys.executable, "-m", "gensynth", "train", *args], env={**os.environ, **CHILD_ENV},
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("skipped damaged checkpoint") == 1, r.stderr
    warned = [line for line in r.stderr.splitlines() if "skipped damaged checkpoint" in line]
    assert warned[0].startswith("warning: skipped damaged checkpoint(s): checkpoint file ") and \
        "step_00000006/generator.safetensors is damaged" in warned[0]
    assert not (run / "checkpoints" / ".LATEST.tmp-deadbeef").exists()
