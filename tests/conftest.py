"""Shared fixtures. ``tiny_run``: one tiny OASIS training run on demo data, trained once per session.

Other tests (generate, evaluate, segment) load it with ``gensynth.api.load_model(tiny_run.run_dir)``.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pytest
import torch

# child processes (torchrun, subprocess) must not oversubscribe the 2 cores; the main process keeps 2 threads
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="session", autouse=True)
def _child_temp_files_under_pytest_tmp(tmp_path_factory):
    """Temporary files of child processes and in-process launches (torchrun's ``torchelastic_*`` log directories,
    which it leaves behind) go under pytest's base temporary directory, which pytest prunes, not the machine's /tmp."""
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("child-tmp"))
    tempfile.tempdir = None  # in-process launches (gensynth train --nproc) read it too
    yield
    if old is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = old
    tempfile.tempdir = None


def spectral_train_call(module, x, sizes=None) -> tuple:
    """One training forward of a spectral-norm layer on a copy of ``x`` (as ``len(sizes)`` consecutive calls when
    given) and a backward of a fixed ramp: (output, input grad, weight_orig grad, bias grad)."""
    from gensynth.nn.spectral import consecutive_calls

    xi = x.clone().requires_grad_()
    with consecutive_calls(module, sizes) if sizes else contextlib.nullcontext():
        y = module(xi)
    y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
    return y, xi.grad, module.weight_orig.grad, module.bias.grad


def tiny_overrides(run_dir: str | Path, cache_dir: str | Path, **extra) -> dict:
    """Dotted config keys for a tiny, fast OASIS on 32x32 demo data (seconds per run on CPU)."""
    cli = {
        "model.preset": "oasis", "data.name": "demo", "data.size": [32, 32], "data.demo_samples": 16,
        "data.num_workers": 0, "data.cache_dir": str(cache_dir),
        "model.generator_options.channels": 4, "model.generator_options.num_res_blocks": 2,
        "model.generator_options.spade_hidden": 8, "model.generator_options.z_dim": 4,
        "model.discriminator_options.num_res_blocks": 2, "model.discriminator_options.width": 0.0625,
        "trainer.steps": 6, "trainer.batch_size": 4, "trainer.log_every": 2, "trainer.sample_every": 3,
        "trainer.checkpoint_every": 3, "trainer.bn_refresh_batches": 2, "trainer.deterministic": True,
        "trainer.run_dir": str(run_dir),
    }
    cli.update(extra)
    return cli


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """A session-wide data cache directory (demo shards are converted once)."""
    return tmp_path_factory.mktemp("gensynth-cache")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_cache):
    """TrainResult of a tiny OASIS trained 6 steps on 32x32 demo data (checkpoints at steps 3 and 6).

    The run directory holds config.json, metrics.jsonl, tb/, samples/ and checkpoints/ (LATEST -> step 6).
    Do not modify it: copy it (shutil.copytree) when a test needs to change files.
    """
    from rich.console import Console

    from gensynth.config import resolve
    from gensynth.train.trainer import run_training

    run_dir = tmp_path_factory.mktemp("tiny-run") / "run"
    cfg, provenance = resolve(tiny_overrides(run_dir, tiny_cache))
    with open(os.devnull, "w") as devnull:
        return run_training(cfg, provenance, console=Console(file=devnull))


@pytest.fixture(scope="session")
def painting_run(tmp_path_factory, tiny_cache):
    """TrainResult of the tiny OASIS of ``tiny_run`` trained 20 steps at a 30x generator learning rate (~1 s).

    The 6-step ``tiny_run`` still outputs a near-constant grey (|image| < 0.005) that 8-bit PNGs cannot tell apart;
    this one's images vary with labels and noise by tenths, which is what ``gensynth paint``'s tests look at.
    """
    from rich.console import Console

    from gensynth.config import resolve
    from gensynth.train.trainer import run_training

    run_dir = tmp_path_factory.mktemp("painting-run") / "run"
    cfg, provenance = resolve(tiny_overrides(run_dir, tiny_cache, **{
        "trainer.steps": 20, "optim.lr_g": 3e-3, "trainer.checkpoint_every": 20, "trainer.sample_every": 20,
        "trainer.log_every": 10}))
    with open(os.devnull, "w") as devnull:
        return run_training(cfg, provenance, console=Console(file=devnull))


@pytest.fixture(scope="session")
def spade_vae_run(tmp_path_factory, tiny_cache):
    """TrainResult of a tiny SPADE with a VAE style encoder (ngf 4, z_dim 8), 20 steps at a 30x generator learning
    rate on 32x32 demo data (~6 s), so that its images vary with the style (2 steps leave them a constant grey)."""
    from rich.console import Console

    from gensynth.config import resolve
    from gensynth.train.trainer import run_training

    run_dir = tmp_path_factory.mktemp("spade-vae") / "run"
    cfg, provenance = resolve({
        "model.preset": "spade", "data.name": "demo", "data.size": [32, 32], "data.demo_samples": 16,
        "data.num_workers": 0, "data.cache_dir": str(tiny_cache), "model.losses.kl": 0.05,
        "model.generator_options": {"ngf": 4, "use_vae": True, "size": [32, 32], "encoder_size": 16, "z_dim": 8},
        "model.discriminator_options.ndf": 8, "model.discriminator": "patchgan-single",
        "trainer.steps": 20, "optim.lr_g": 3e-3, "trainer.batch_size": 4, "trainer.log_every": 10,
        "trainer.sample_every": 20, "trainer.checkpoint_every": 20, "trainer.bn_refresh_batches": 1,
        "trainer.run_dir": str(run_dir)})
    with open(os.devnull, "w") as devnull:
        return run_training(cfg, provenance, console=Console(file=devnull))


def styled_reference(syn, ids, style_png: bytes, seed: int):
    """What ``gensynth paint`` should make of a style image: the generator fed the style image (PNG bytes, resized
    bilinearly to the label map's size, scaled to [-1, 1]) with torch's RNG seeded by ``seed`` for the draw
    from q(z | style). ids: (H, W) model ids. Returns (image (1, 3, H, W) float, (H, W, 3) uint8)."""
    import io

    import numpy as np
    from PIL import Image

    h, w = ids.shape
    with Image.open(io.BytesIO(style_png)) as im:
        rgb = np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR)).copy()
    cond = syn.condition(torch.as_tensor(ids)[None])
    cond.style_image = torch.from_numpy(rgb).permute(2, 0, 1).float()[None] / 127.5 - 1
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        image = syn.generator(cond, None).image.float()
    return image, np.asarray(syn.to_pil(image)[0])
