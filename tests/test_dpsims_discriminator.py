"""The dp-sims discriminator (gensynth_dpsims): contracts, frozen backbone (no gradients, no optimiser state, no
autograd graph for images that need none), partial fine-tuning with its own lr, feature conditioning, local weights
with a clear message, and the full ConvNeXt-L build on the meta device.

Backbones are timm's tiny ``test_*`` models with random weights; images are 64x64 or smaller.
"""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from gensynth.build import build_discriminator, build_generator, resolve_parts
from gensynth.config import resolve
from gensynth.errors import CheckpointError, ConfigError, MissingWeightsError
from gensynth.interfaces import DOutputKind
from gensynth.train.param_groups import param_groups

timm = pytest.importorskip("timm")
import gensynth_dpsims.plugin  # noqa: E402
from gensynth_dpsims.decoder import FeatureConditioner, standardise_sigmoid  # noqa: E402
from gensynth_dpsims.discriminator import DPSIMSDiscriminator  # noqa: E402

TINY = dict(pretrained=False, decoder_channels=[8, 8, 16, 16], head_channels=8)


def make_d(num_classes=4, backbone="test_convnext", **options) -> DPSIMSDiscriminator:
    opts = {**TINY, **options}
    if backbone == "test_resnet":  # 5 feature levels
        opts["decoder_channels"] = [8, 8, 8, 16, 16]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # frozen random backbone
        return DPSIMSDiscriminator(num_classes, backbone=backbone, **opts)


def test_every_part_of_the_plugin_keeps_its_contracts():
    from gensynth.testing import assert_plugin_ok, plugin_host

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        results = assert_plugin_ok(gensynth_dpsims.plugin, host=plugin_host(gensynth_dpsims.plugin))
    checked = {(r.kind, r.name) for r in results if r.status == "ok"}
    assert {("generator", "dp-sims"), ("discriminator", "dp-sims"), ("objective", "focal-n+1"),
            ("loss", "patch-nce"), ("loss", "diversity"), ("model", "dp-sims"), ("model", "dp-sims-small")} <= checked


@pytest.mark.parametrize("backbone,size", [("test_convnext", (64, 64)), ("test_resnet", (48, 80))])
def test_full_resolution_n_plus_one_logits_and_conditioned_features(backbone, size):
    torch.manual_seed(0)
    d = make_d(5, backbone)
    image = torch.rand(2, 3, *size) * 2 - 1
    with torch.no_grad():
        d(image)  # a train-mode call runs spectral norm's power iteration once ...
    d.eval()  # ... which eval mode keeps fixed
    out = d(image)
    assert out.kind is DOutputKind.PIXEL_CLASSES and out.logits.shape == (2, 6, *size)
    feats = out.features[0]
    assert [f.shape[1] for f in feats] == d.encoder.channels
    assert all(0 < float(f.min()) and float(f.max()) < 1 for f in feats)  # standardise-sigmoid: in (0, 1)
    torch.testing.assert_close(d(image[1:]).logits, out.logits[1:], rtol=1e-4, atol=1e-5)  # per image


def test_frozen_backbone_gets_no_gradient_and_no_optimiser_state_but_the_image_does():
    torch.manual_seed(0)
    d = make_d(4)
    d.train()
    backbone = list(d.encoder.parameters())
    assert backbone and all(not p.requires_grad for p in backbone)
    image = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    d(image).logits.square().mean().backward()
    assert all(p.grad is None for p in backbone)
    assert image.grad is not None and image.grad.abs().sum() > 0  # G learns through the frozen backbone
    decoder = [p for n, p in d.named_parameters() if not n.startswith("encoder.")]
    assert all(p.grad is not None for p in decoder)
    groups = param_groups(d, 4e-4)
    assert len(groups) == 1 and groups[0]["lr"] == 4e-4
    given = {id(p) for g in groups for p in g["params"]}
    assert given == {id(p) for p in decoder} and not given & {id(p) for p in backbone}
    opt = torch.optim.Adam(groups, lr=4e-4)
    opt.step()
    assert set(opt.state) == {p for p in decoder if p.grad is not None}


def test_training_run_keeps_no_optimiser_state_for_the_frozen_backbone(tmp_path, tiny_cache):
    """``gensynth train --model dp-sims --data demo`` at a tiny size, 2 steps: the saved optimiser state of D covers
    exactly its trainable parameters (decoder), none of the frozen backbone's; the backbone is unchanged."""
    from click.testing import CliRunner

    from gensynth.checkpoint import list_checkpoints, load_checkpoint
    from gensynth.cli.main import cli

    G, D = "model.generator_options.dp-sims.", "model.discriminator_options.dp-sims."
    sets = {"data.size": [32, 32], "data.demo_samples": 8, "data.num_workers": 0, "data.cache_dir": str(tiny_cache),
            "trainer.batch_size": 2, "trainer.checkpoint_every": 1, "trainer.sample_every": 2,
            "trainer.bn_refresh_batches": 1, "trainer.run_dir": str(tmp_path / "run"),
            G + "channels": 4, G + "num_res_blocks": 3, G + "encoder_channels": 4, G + "encoder_max_channels": 8,
            G + "token_dim": 8, G + "noise_tokens": 2, G + "spade_hidden": 8,
            D + "frozen_stages": "all", D + "decoder_channels": [8, 8, 8, 8], D + "head_channels": 8}
    args = ["train", "--model", "dp-sims", "--data", "demo", "--steps", "2"]
    for k, v in sets.items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(tmp_path / "run")
    state = ckpt.training_state()["optim_d"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        d = DPSIMSDiscriminator(11, backbone="test_convnext", pretrained=False, decoder_channels=[8, 8, 8, 8],
                                head_channels=8)
    trainable = [p for p in d.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in state["param_groups"]) == len(trainable) == len(state["state"])
    assert len(trainable) < len(list(d.parameters())) - 10  # the backbone's tensors are left out
    first, last = [load_checkpoint(p).state("discriminator") for p in list_checkpoints(tmp_path / "run" / "checkpoints")]
    backbone = [k for k in last if k.startswith("encoder.")]
    assert backbone and all(torch.equal(first[k], last[k]) for k in backbone)  # frozen between steps 1 and 2
    assert not torch.equal(first["head.weight"], last["head.weight"])  # the decoder trains


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn`` runs."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def test_images_that_need_no_gradient_run_the_frozen_backbone_without_a_graph_and_same_results():
    torch.manual_seed(0)
    d = make_d(4, decoder_channels=[4, 4, 4, 4], head_channels=4, image_stem=False)
    d.eval()
    real = torch.rand(2, 3, 64, 64) * 2 - 1
    feats = d.encoder(d.normalise(real))
    assert all(f.grad_fn is None for f in feats)  # no graph recorded through the frozen backbone
    out_fast = d(real).logits
    fast_grads = torch.autograd.grad(out_fast.square().mean(), [d.head.weight])[0]
    # the same image with requires_grad forces the full graph: identical logits and decoder gradients
    forced = real.clone().requires_grad_(True)
    out_full = d(forced).logits
    full_grads = torch.autograd.grad(out_full.square().mean(), [d.head.weight])[0]
    torch.testing.assert_close(out_fast, out_full)
    torch.testing.assert_close(fast_grads, full_grads)
    # and autograd keeps far less: the backbone's activations are not saved
    cheap = _saved_bytes(lambda: d(real))
    full = _saved_bytes(lambda: d(real.clone().requires_grad_(True)))
    assert cheap < 0.5 * full, (cheap, full)


def test_partial_freezing_fine_tunes_the_deep_stages_at_their_own_lr():
    torch.manual_seed(0)
    d = make_d(4, frozen_stages=2, backbone_lr_scale=0.25)
    names = {n.split(".")[1] for n, p in d.encoder.named_parameters() if not p.requires_grad}
    assert names == {"stem_0", "stem_1", "stages_0", "stages_1"}
    tuned = d.encoder.trainable_parameters()
    assert tuned and {n.split(".")[1] for n, p in d.encoder.named_parameters() if p.requires_grad} == \
        {"stages_2", "stages_3"}
    groups = param_groups(d, 1e-3)
    assert [g["lr"] for g in groups] == [1e-3, 0.25e-3]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in tuned}
    d.train()
    assert not d.encoder.features.stages_0.training and d.encoder.features.stages_3.training
    real = torch.rand(2, 3, 64, 64) * 2 - 1
    d(real).logits.mean().backward()
    for n, p in d.encoder.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
    everything = make_d(4, frozen_stages=0)
    assert all(p.requires_grad for p in everything.encoder.parameters())


def test_a_fine_tuned_batchnorm_makes_the_outputs_depend_on_the_batch():
    assert make_d(4, "test_resnet").batch_independent  # frozen BN: fixed statistics
    assert not make_d(4, "test_resnet", frozen_stages=0).batch_independent
    assert make_d(4, "test_convnext", frozen_stages=0).batch_independent  # LayerNorm only


def test_feature_conditioning_modes():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5) * torch.tensor([1.0, 100.0, 0.1]).view(1, 3, 1, 1) + 7
    y = standardise_sigmoid(x)
    mean, std = x.mean((2, 3), keepdim=True), x.std((2, 3), keepdim=True, unbiased=False)
    torch.testing.assert_close(y, torch.sigmoid((x - mean) / (std ** 2 + 1e-5).sqrt()), rtol=1e-4, atol=1e-5)
    # after conditioning every channel has the same spread whatever its raw scale
    spreads = torch.logit(y).std((0, 2, 3))
    torch.testing.assert_close(spreads, torch.full((3,), float(spreads[0])), rtol=0.2, atol=0)
    ln = FeatureConditioner(3, 2, "layernorm", spectral=False).conditioned(x)
    torch.testing.assert_close(ln.mean(1), torch.zeros(2, 4, 5), atol=1e-4, rtol=0)
    assert torch.equal(FeatureConditioner(3, 2, "none", spectral=False).conditioned(x), x)
    for mode in ("none", "layernorm"):
        out = make_d(3, feature_conditioning=mode)(torch.rand(1, 3, 32, 32) * 2 - 1)
        assert out.logits.shape == (1, 4, 32, 32)


def test_missing_weights_name_the_file_the_url_and_the_option(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSYNTH_WEIGHTS_DIR", str(tmp_path / "weights"))
    with pytest.raises(MissingWeightsError) as err:
        DPSIMSDiscriminator(3, backbone="test_convnext", decoder_channels=[8, 8, 16, 16])
    msg = str(err.value)
    assert str(tmp_path / "weights" / "test_convnext.safetensors") in msg
    assert "https://huggingface.co/timm/test_convnext" in msg and "model.safetensors" in msg
    assert "model.discriminator_options.dp-sims.weights_path" in msg
    assert "timm.create_model('test_convnext', pretrained=True)" in msg


def test_weights_load_from_the_default_folder_and_a_foreign_file_is_rejected(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    full = timm.create_model("test_convnext", pretrained=False)
    for p in full.parameters():
        p.data.normal_()
    folder = tmp_path / "weights"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(folder / "test_convnext.safetensors"))
    monkeypatch.setenv("GENSYNTH_WEIGHTS_DIR", str(folder))
    d = DPSIMSDiscriminator(3, backbone="test_convnext", decoder_channels=[8, 8, 16, 16])
    torch.testing.assert_close(d.encoder.features.stages_3.blocks[0].conv_dw.weight,
                               full.stages[3].blocks[0].conv_dw.weight)
    other = tmp_path / "resnet.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}, str(other))
    with pytest.raises(CheckpointError, match="does not fit backbone 'test_convnext'"):
        DPSIMSDiscriminator(3, backbone="test_convnext", weights_path=str(other), decoder_channels=[8, 8, 16, 16])


def test_bad_options_name_the_key_and_value():
    with pytest.raises(ConfigError, match="convnext_larg.*convnext_large"):
        DPSIMSDiscriminator(3, backbone="convnext_larg")
    with pytest.raises(ConfigError, match="frozen_stages = 7: the backbone has 4 feature levels"):
        make_d(3, frozen_stages=7)
    with pytest.raises(ConfigError, match="gives 4 feature levels"):
        make_d(3, decoder_channels=[8, 8])


def test_preset_on_ade20k_builds_convnext_large_on_the_meta_device():
    cfg, _ = resolve({"model.preset": "dp-sims", "data.name": "ade20k"})
    parts = resolve_parts(cfg)
    assert parts.discriminator == "dp-sims" and parts.objective == "focal-n+1"
    assert parts.discriminator_options["backbone"] == "convnext_large"
    assert parts.losses == {"labelmix": 10.0, "patch-nce": 1.0, "diversity": 0.1}
    with torch.device("meta"):
        d = build_discriminator(parts)
        g = build_generator(parts)
        reference = timm.create_model("convnext_large", features_only=True)
    assert d.encoder.channels == [192, 384, 768, 1536] and d.widths == [128, 256, 512, 512]
    backbone = sum(p.numel() for p in d.encoder.parameters())
    assert backbone == sum(p.numel() for p in reference.parameters())
    assert 195e6 < backbone < 197e6  # ConvNeXt-L without its classifier
    assert all(not p.requires_grad for p in d.encoder.parameters())
    assert all(p.device.type == "meta" for p in d.parameters())
    assert g.num_res_blocks == 6 and g.widths == [1024, 1024, 1024, 512, 256, 128, 64]


def test_small_preset_uses_convnext_atto():
    cfg, _ = resolve({"model.preset": "dp-sims-small", "data.name": "cityscapes"})
    parts = resolve_parts(cfg)
    assert parts.discriminator_options["backbone"] == "convnext_atto"
    assert parts.losses["labelmix"] == 5.0  # OASIS's Cityscapes value
    with torch.device("meta"):
        d = build_discriminator(parts)
    assert d.encoder.channels == [40, 80, 160, 320]
