"""VGG19 perceptual loss: architecture, local weights file, missing-file message, the 'vgg' loss term."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gensynth.errors import CheckpointError, MissingWeightsError
from gensynth.interfaces import StepContext
from gensynth.nn.vgg import LAYER_WEIGHTS, VGG19_FILENAME, VGG19Slices, VGGLoss, vgg19_features
from gensynth.plugins import PluginHost


def test_layout_matches_torchvision_vgg19():
    import torchvision

    with torch.device("meta"):
        tv = torchvision.models.vgg19(weights=None).features
    ours = vgg19_features()
    assert [type(m) for m in ours] == [type(m) for m in tv]
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in tv.state_dict().items()}


def test_slices_end_at_relu_x_1():
    torch.manual_seed(0)
    vgg = VGG19Slices(random_init=True)
    assert not vgg.training and all(not p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training  # stays frozen in eval mode
    assert [len(s) for s in vgg.slices] == [2, 5, 5, 9, 9]  # ends 2, 7, 12, 21, 30
    assert all(isinstance(s[-1], torch.nn.ReLU) for s in vgg.slices)
    feats = vgg(torch.rand(1, 3, 32, 32) * 2 - 1)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]
    assert all((f >= 0).all() for f in feats)


def test_loss_is_weighted_l1_of_features():
    torch.manual_seed(0)
    loss = VGGLoss(random_init=True)
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    value = loss(x, y)
    fx, fy = loss.vgg(x), loss.vgg(y)
    expected = sum(w * F.l1_loss(a, b) for w, a, b in zip((1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0), fx, fy))
    assert LAYER_WEIGHTS == (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5) and value.item() > 0
    assert loss(y, y).item() == 0.0
    value.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_normalize_input_option_changes_features():
    torch.manual_seed(0)
    a = VGG19Slices(random_init=True)
    b = VGG19Slices(random_init=True, normalize_input=True)
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(b(x)[0], a(((x + 1) / 2 - mean) / std)[0], atol=1e-5)


def test_loads_torchvision_state_dict_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    src = vgg19_features()
    state = {f"features.{k}": v for k, v in src.state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(10)  # the classifier is ignored
    path = tmp_path / VGG19_FILENAME
    torch.save(state, path)
    vgg = VGG19Slices(path)
    assert torch.equal(vgg.slices[0][0].weight, src[0].weight)
    assert torch.equal(vgg.slices[4][-2].weight, src[28].weight)
    x = torch.rand(1, 3, 16, 16)
    assert torch.allclose(vgg(x)[4], src[:30](x))


def test_missing_file_message(tmp_path):
    path = tmp_path / "weights" / VGG19_FILENAME
    with pytest.raises(MissingWeightsError) as exc:
        VGGLoss(path)
    msg = str(exc.value)
    assert str(path) in msg and "model.loss_options.vgg.weights_path" in msg
    assert "torchvision.models.vgg19(weights='IMAGENET1K_V1')" in msg and "model.losses.vgg=0" in msg


def test_missing_default_location_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="no weights_path was configured") as exc:
        VGG19Slices()
    assert str(tmp_path / "hub" / "checkpoints" / VGG19_FILENAME) in str(exc.value)


def test_wrong_file_contents(tmp_path):
    bad = tmp_path / "vgg16.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, bad)
    with pytest.raises(CheckpointError, match="lack features"):
        VGG19Slices(bad)
    shaped = {f"features.{k}": v for k, v in vgg19_features().state_dict().items()}
    shaped["features.2.weight"] = torch.zeros(32, 64, 3, 3)
    torch.save(shaped, bad)
    with pytest.raises(CheckpointError, match=r"features.2.weight has shape \(32, 64, 3, 3\)"):
        VGG19Slices(bad)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read VGG19 weights"):
        VGG19Slices(garbage)


def test_vgg_loss_term_registered_in_core(tmp_path):
    host = PluginHost(load_entry_points=False)
    entry = host.registry("losses").entry("vgg")
    assert entry.plugin == "gensynth"
    term = entry.obj(weight=None, random_init=True)
    assert term.weight == 10 and term.side == "G" and term.requires == frozenset()
    real = torch.rand(1, 3, 16, 16) * 2 - 1
    fake = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_(True)
    ctx = StepContext(real=real, fake=fake, cond=None, discriminator=None)
    value = term(ctx)
    assert value.item() == pytest.approx(term.loss(fake, real).item()) and value.item() > 0
    with pytest.raises(MissingWeightsError, match=str(tmp_path / "nope.pth").replace("\\", "\\\\")):
        entry.obj(weight=10, weights_path=str(tmp_path / "nope.pth"))
