"""Segmenters: the run's discriminator (``gensynth segment``), TorchScript files, the small trained segmenter."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from gensynth.cli.main import cli
from gensynth.errors import CheckpointError, IncompatibleError
from gensynth.eval.segmenters import (DiscriminatorSegmenter, SmallSegNet, build_segmenter, save_small_segmenter)
from gensynth.plugins import registry


def test_core_segmenters_are_registered():
    reg = registry("segmenters")
    for name in ("oasis-discriminator", "torchscript", "gensynth-segmenter"):
        assert reg.entry(name).plugin == "gensynth"


def test_segment_cli_writes_ids_overlays_and_resynthesis(tiny_run, tmp_path):
    from gensynth.api import load_model

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(imgs / "a.png")
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(imgs / "b.jpg")  # resized to 32x32
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["segment", "-c", str(tiny_run.run_dir), "-i", str(imgs), "-o", str(out),
                                 "--resynthesize", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    ids = np.asarray(Image.open(out / "a_ids.png"))
    assert ids.shape == (32, 32) and ids.min() >= 0 and ids.max() <= 10
    assert Image.open(out / "b_overlay.png").size == (32, 32)
    assert Image.open(out / "b_resynth.png").size == (32, 32)
    # the ids are the argmax over the N real-class channels of the discriminator (fake channel 0 dropped)
    m = load_model(tiny_run.run_dir, with_discriminator=True)
    x = torch.from_numpy(np.asarray(Image.open(imgs / "a.png"), dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        expected = m.discriminator(x).logits[:, 1:].argmax(1)[0].numpy()
    assert np.array_equal(ids, expected)
    r = CliRunner().invoke(cli, ["segment", "-c", str(tiny_run.run_dir), "-i", str(tmp_path / "out" / "a_ids.png"),
                                 "-o", str(tmp_path / "o2"), "--device", "cpu"])
    assert r.exit_code == 0  # a greyscale image is read as RGB


def test_discriminator_segmenter_needs_n_plus_1_outputs():
    from gensynth.interfaces import Discriminator, DiscriminatorOutput, DOutputKind

    class PatchD(Discriminator):
        output_kind = DOutputKind.PATCH

        def forward(self, image, cond=None):
            return DiscriminatorOutput(self.output_kind, [image.mean(1, keepdim=True)])

    with pytest.raises(IncompatibleError, match="per-pixel N\\+1 .*PatchD outputs 'patch'"):
        DiscriminatorSegmenter(PatchD(), 11)


def test_torchscript_segmenter(tmp_path):
    net = SmallSegNet(5, width=2, depth=1).eval()
    path = tmp_path / "seg.pt"
    torch.jit.trace(net, torch.zeros(1, 3, 16, 16)).save(str(path))
    seg = build_segmenter("torchscript", num_classes=5, path=str(path), outputs="model", normalize="minus1-1",
                          input_size=(16, 16))
    x = torch.rand(2, 3, 24, 24) * 2 - 1
    out = seg(x)
    assert out.shape == (2, 5, 24, 24)  # resized to 16x16 for the net, logits back to the input size
    ref = torch.nn.functional.interpolate(net(torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear")),
                                          size=(24, 24), mode="bilinear")
    assert torch.allclose(out, ref, atol=1e-5)
    with pytest.raises(CheckpointError, match="nope.pt does not exist"):
        build_segmenter("torchscript", num_classes=5, path=str(tmp_path / "nope.pt"))


def test_small_segmenter_save_load_and_class_check(tmp_path):
    net = SmallSegNet(4, width=2, depth=2).eval()
    save_small_segmenter(net, tmp_path / "s", {"dataset": "demo", "size": [16, 16]})
    back = build_segmenter("gensynth-segmenter", num_classes=4, path=str(tmp_path / "s"))
    x = torch.rand(1, 3, 20, 20) * 2 - 1  # not a multiple of 4: padded inside
    assert torch.allclose(back(x), net(x)) and back(x).shape == (1, 4, 20, 20)
    with pytest.raises(IncompatibleError, match="trained for 4 classes"):
        build_segmenter("gensynth-segmenter", num_classes=11, path=str(tmp_path / "s"))
    with pytest.raises(CheckpointError, match="gensynth segmenter train"):
        build_segmenter("gensynth-segmenter", num_classes=4, path=str(tmp_path))


def test_segmenter_train_cli_learns_demo(tmp_path, tiny_cache):
    out = tmp_path / "seg"
    args = ["segmenter", "train", "--data", "demo", "--out", str(out), "--steps", "40", "--batch-size", "4",
            "--width", "8", "--lr", "0.01", "--device", "cpu", "--set", "data.size=[32,32]",
            "--set", "data.demo_samples=16", "--set", "data.num_workers=0", "--set", f"data.cache_dir={tiny_cache}"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    import json

    meta = json.loads((out / "segmenter.json").read_text())
    assert meta["num_classes"] == 11 and meta["size"] == [32, 32]
    assert meta["final_loss"] < np.log(10)  # better than a uniform guess over the 10 real classes
