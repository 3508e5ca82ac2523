"""The timm-unet discriminator (gensynth_timm): shapes, frozen encoder, local weights, training with n+1 + LabelMix.

Backbones are timm's tiny ``test_*`` models, randomly initialised; images are 64x64 or smaller.
"""
from __future__ import annotations

import re
import warnings

import pytest
import torch

from gensynth.build import build_discriminator, build_generator, build_method, resolve_parts
from gensynth.config import resolve
from gensynth.errors import CheckpointError, ConfigError, MissingWeightsError
from gensynth.interfaces import Condition, DOutputKind, one_hot

timm = pytest.importorskip("timm")
from gensynth_timm.discriminator import TimmUNetDiscriminator  # noqa: E402
from gensynth.nn.backbone_weights import load_backbone_weights  # noqa: E402

TINY = dict(decoder_channels=[8, 8, 16, 16, 16], head_channels=8)


def make_d(num_classes=4, backbone="test_resnet", **options) -> TimmUNetDiscriminator:
    opts = {**TINY, **options}
    if backbone == "test_convnext":  # 4 feature levels
        opts.setdefault("decoder_channels", [8, 8, 16, 16])
        opts["decoder_channels"] = opts["decoder_channels"][:4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # frozen encoder without weights
        return TimmUNetDiscriminator(num_classes, backbone=backbone, **opts)


@pytest.mark.parametrize("backbone,size", [("test_resnet", (64, 64)), ("test_convnext", (64, 64)),
                                           ("test_efficientnet", (48, 80))])
def test_output_is_full_resolution_n_plus_one_logits(backbone, size):
    torch.manual_seed(0)
    d = make_d(5, backbone)
    image = torch.rand(2, 3, *size) * 2 - 1
    with torch.no_grad():
        d(image)  # one train-mode call runs spectral norm's power iteration (fresh u, v are random) ...
    d.eval()  # ... which eval mode then keeps fixed between calls
    out = d(image)
    assert out.kind is DOutputKind.PIXEL_CLASSES and TimmUNetDiscriminator.output_kind is DOutputKind.PIXEL_CLASSES
    assert out.logits.shape == (2, 6, *size)
    assert torch.isfinite(out.logits).all()
    # per-image computation: the second image's logits do not depend on the first image
    out_single = d(image[1:])
    torch.testing.assert_close(out_single.logits, out.logits[1:], rtol=1e-4, atol=1e-5)


def test_imagenet_normalisation_from_pretrained_cfg():
    d = make_d(3, "test_efficientnet", decoder_channels=[8, 8, 8, 8, 8])
    mean = torch.tensor(d.encoder.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(d.encoder.pretrained_cfg["std"]).view(1, 3, 1, 1)
    assert mean[0, 0, 0, 0].item() == pytest.approx(0.485)  # an ImageNet model, not 0.5
    image = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    expected = (torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1) - mean) / std
    torch.testing.assert_close(d.normalise(image), expected.expand(1, 3, 2, 2))


def test_channel_zero_means_fake_after_training_with_n_plus_one():
    """A few D steps with the OASIS objective teach the channel layout: real pixels -> class+1, fakes -> 0."""
    from gensynth.plugins import registry

    torch.manual_seed(0)
    n = 3
    d = make_d(n, "test_resnet", decoder_channels=[16, 16, 16, 16, 16], head_channels=16)
    objective = registry("objectives").get("n+1")(dontcare=None)
    palette = torch.tensor([[1.0, -1, -1], [-1, 1.0, -1], [-1, -1, 1.0]])
    ids = torch.zeros(2, 32, 32, dtype=torch.long)
    ids[:, :, 11:22] = 1
    ids[:, :, 22:] = 2
    cond = Condition(one_hot(ids, n))
    real = palette[ids].permute(0, 3, 1, 2)
    opt = torch.optim.Adam([p for p in d.parameters() if p.requires_grad], lr=2e-3)
    for _ in range(20):
        fake = torch.rand(2, 3, 32, 32) * 2 - 1
        loss = objective.d_loss(d(real), cond, "real") + objective.d_loss(d(fake), cond, "fake")
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        real_pred = d(real).logits.argmax(1)
        fake_pred = d(torch.rand(2, 3, 32, 32) * 2 - 1).logits.argmax(1)
    assert (real_pred == ids + 1).float().mean() > 0.9
    assert (fake_pred == 0).float().mean() > 0.9


def test_frozen_encoder_gets_no_grad_but_decoder_and_image_do():
    torch.manual_seed(0)
    d = make_d(4, "test_resnet")
    d.train()
    assert not d.encoder.training, "a frozen encoder must stay in eval mode (fixed BN statistics)"
    assert all(not p.requires_grad for p in d.encoder.parameters())
    bn_before = {k: v.clone() for k, v in d.encoder.state_dict().items() if "running_mean" in k}
    assert bn_before
    image = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    d(image).logits.square().mean().backward()
    assert all(p.grad is None for p in d.encoder.parameters())
    decoder = [p for n, p in d.named_parameters() if not n.startswith("encoder.")]
    assert decoder and all(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder)
    # the generator learns through a frozen D: gradients reach the input image
    assert image.grad is not None and image.grad.abs().sum() > 0
    for k, v in d.encoder.state_dict().items():
        if k in bn_before:
            torch.testing.assert_close(v, bn_before[k])


def test_unfrozen_encoder_trains():
    d = make_d(4, "test_resnet", freeze_encoder=False)
    d.train()
    assert d.encoder.training
    d(torch.rand(2, 3, 64, 64) * 2 - 1).logits.mean().backward()
    grads = [p.grad for p in d.encoder.parameters()]
    assert grads and all(g is not None for g in grads)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_weights_file_round_trip(tmp_path, fmt):
    """A full timm state dict (with its classification head, stage names unflattened) loads into the encoder."""
    torch.manual_seed(1)
    full = timm.create_model("test_convnext", pretrained=False)
    for p in full.parameters():  # make them distinguishable from any fresh init
        p.data.normal_()
    state = {k: v.contiguous() for k, v in full.state_dict().items()}
    path = tmp_path / f"convnext.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    d = make_d(4, "test_convnext", weights_path=str(path))
    loaded = d.encoder.state_dict()
    assert any(k.startswith("stages_") for k in loaded)  # timm flattened the names; the loader maps them
    checked = 0
    for key, value in loaded.items():
        src = key if key in state else re.sub(r"^([a-z]+)_(\d+)\.", r"\1.\2.", key)  # stages_0. -> stages.0.
        torch.testing.assert_close(value, state[src])
        checked += 1
    assert checked == len(loaded)


def test_weights_of_another_backbone_are_rejected(tmp_path):
    from safetensors.torch import save_file

    other = timm.create_model("test_efficientnet", pretrained=False)
    path = tmp_path / "effnet.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError) as err:
        make_d(4, "test_resnet", weights_path=str(path))
    msg = str(err.value)
    assert str(path) in msg and "test_resnet" in msg and "missing" in msg


def test_pickled_code_is_not_executed(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weights": torch.zeros(1), "hook": print}, path)  # a callable: refused by weights_only
    enc = timm.create_model("test_resnet", features_only=True)
    with pytest.raises(CheckpointError, match="cannot read backbone weights"):
        load_backbone_weights(enc, path, "test_resnet")


def test_missing_weights_file_says_how_to_get_it(tmp_path):
    missing = tmp_path / "nowhere" / "convnext_atto.safetensors"
    with pytest.raises(MissingWeightsError) as err:
        make_d(4, "test_resnet", weights_path=str(missing))
    msg = str(err.value)
    assert str(missing) in msg
    assert "timm.create_model('test_resnet', pretrained=True)" in msg
    assert "weights_path" in msg


def test_frozen_without_weights_warns():
    with pytest.warns(UserWarning, match="weights_path"):
        TimmUNetDiscriminator(3, backbone="test_resnet", **TINY)


def test_options_are_validated_through_the_config():
    cfg, _ = resolve({"model.discriminator": "timm-unet", "model.discriminator_options": {"backbone": "resnet_18"}})
    with pytest.raises(ConfigError) as err:
        resolve_parts(cfg)
    assert "resnet_18" in str(err.value) and "resnet18" in str(err.value)  # names the value and suggests
    with pytest.raises(ConfigError, match="gives 5 feature levels"):
        TimmUNetDiscriminator(3, backbone="test_resnet", decoder_channels=[8, 8])


def test_trains_with_oasis_generator_n_plus_one_and_labelmix():
    torch.manual_seed(0)
    cfg, _ = resolve({
        "model.preset": "oasis", "data.name": "demo", "model.discriminator": "timm-unet",
        "model.discriminator_options": {"backbone": "test_resnet", **TINY},
        "model.generator_options": {"channels": 8, "num_res_blocks": 4, "spade_hidden": 8, "norm": "batch"},
    })
    parts = resolve_parts(cfg)
    assert parts.objective == "n+1" and parts.losses == {"labelmix": 10.0} and parts.notes == []
    G = build_generator(parts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        D = build_discriminator(parts)
    method = build_method(parts)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.0, 0.999))
    opt_d = torch.optim.Adam([p for p in D.parameters() if p.requires_grad], lr=4e-4, betas=(0.0, 0.999))
    encoder_before = {k: v.clone() for k, v in D.encoder.state_dict().items()}
    head_before = D.head.weight.detach().clone()
    ids = torch.randint(0, parts.num_classes, (2, 64, 64))
    cond = Condition(one_hot(ids, parts.num_classes))
    real = torch.rand(2, 3, 64, 64) * 2 - 1
    for step in range(2):
        g = method.g_losses(G, D, real, cond, step)
        assert set(g) == {"G_adv"}
        opt_g.zero_grad()
        sum(g.values()).backward()
        opt_g.step()
        d = method.d_losses(G, D, real, cond, step)
        assert set(d) == {"D_fake", "D_real", "labelmix"}
        assert all(torch.isfinite(v) for v in d.values())
        opt_d.zero_grad()
        sum(d.values()).backward()
        opt_d.step()
    assert not torch.equal(D.head.weight, head_before)
    for k, v in D.encoder.state_dict().items():
        torch.testing.assert_close(v, encoder_before[k])
