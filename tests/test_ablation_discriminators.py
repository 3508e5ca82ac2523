"""The OASIS-paper ablation discriminators (gensynth_oasis.ablations) and the N+1 ground-truth variants."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gensynth.build import build_discriminator, build_objective, resolve_parts
from gensynth.config import resolve
from gensynth.interfaces import Condition, DOutputKind, one_hot
from gensynth.plugins import registry
from gensynth_oasis.ablations import OASISConcatUNet, OASISEncoderDiscriminator, OASISProjectionUNet
from gensynth_oasis.discriminator import OASISDiscriminator, OASISDiscriminatorOptions, unet_features

TINY = {"num_res_blocks": 4, "width": 0.125}
N = 5


def cond_for(ids: torch.Tensor, n: int = N) -> Condition:
    return Condition(one_hot(ids, n))


def build(name: str, n: int = N, **options):
    torch.manual_seed(0)
    return registry("discriminators").get(name)(num_classes=n, **{**TINY, **options})


def warm(d, image, cond):
    """One train-mode call (spectral norm's power iteration), then eval so repeated calls agree."""
    with torch.no_grad():
        d(image, cond)
    return d.eval()


@pytest.mark.parametrize("name,cls,kind", [("oasis-encoder", OASISEncoderDiscriminator, DOutputKind.IMAGE),
                                           ("oasis-unet-concat", OASISConcatUNet, DOutputKind.PIXEL_BINARY),
                                           ("oasis-unet-projection", OASISProjectionUNet, DOutputKind.PIXEL_BINARY)])
def test_registered_with_class_options_and_binary_objective(name, cls, kind):
    entry = registry("discriminators").entry(name)
    assert entry.extra["cls"] is cls and cls.output_kind is kind and cls.takes_labels
    assert entry.extra["default_objective"] == "bce"
    assert entry.plugin == "oasis"
    assert issubclass(entry.options, OASISDiscriminatorOptions)


def test_output_shapes():
    ids = torch.randint(0, N, (2, 32, 32))
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    enc = build("oasis-encoder")(image, cond_for(ids))
    assert enc.kind is DOutputKind.IMAGE and enc.logits.shape == (2, 1)
    assert len(enc.features) == 1 and [f.shape[-1] for f in enc.features[0]] == [16, 8, 4, 2]
    for name in ("oasis-unet-concat", "oasis-unet-projection"):
        out = build(name)(image, cond_for(ids))
        assert out.kind is DOutputKind.PIXEL_BINARY and out.logits.shape == (2, 1, 32, 32), name


def test_projection_is_per_pixel_inner_product_with_class_embedding():
    d = build("oasis-unet-projection")
    ids = torch.randint(0, N, (1, 32, 32))
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    warm(d, image, cond_for(ids))
    with torch.no_grad():
        out = d(image, cond_for(ids)).logits
        phi = unet_features(d.body_down, d.body_up, image)
        emb = d.embed.weight.view(d.last_channels, N)  # (C, N): column c = embedding of class c
        expected = d.layer_up_last(phi) + (emb[:, ids[0]].unsqueeze(0) * phi).sum(1, keepdim=True)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
        # relabelling one pixel changes the logit at that pixel only (the U-Net body never sees labels)
        ids2 = ids.clone()
        ids2[0, 5, 7] = (ids[0, 5, 7] + 1) % N
        changed = (d(image, cond_for(ids2)).logits - out).abs() > 1e-6
    assert changed[0, 0, 5, 7] and changed.sum() == 1


def test_concat_and_encoder_read_the_labels():
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    ids = torch.randint(0, N, (2, 32, 32))
    other = (ids + 1) % N
    for name in ("oasis-unet-concat", "oasis-encoder"):
        d = warm(build(name), image, cond_for(ids))
        with torch.no_grad():
            a, b = d(image, cond_for(ids)).logits, d(image, cond_for(other)).logits
            again = d(image, cond_for(ids)).logits
        torch.testing.assert_close(a, again)
        assert (a - b).abs().max() > 1e-4, name


def test_labels_are_required_and_must_match():
    image = torch.rand(1, 3, 32, 32)
    for name in ("oasis-encoder", "oasis-unet-concat", "oasis-unet-projection"):
        d = build(name)
        with pytest.raises(ValueError, match=f"{name}.*D\\(image, cond\\)"):
            d(image, None)
        with pytest.raises(ValueError, match=f"built for {N} label channels, got labels with 3"):
            d(image, cond_for(torch.zeros(1, 32, 32, dtype=torch.long), 3))


def test_full_size_parameter_counts_reuse_the_oasis_unet():
    """On the meta device: the concat U-Net = oasis-unet + label channels in the first block - N+1 output head."""
    n = 151  # ADE20K
    with torch.device("meta"):
        unet = OASISDiscriminator(n)
        concat = OASISConcatUNet(n)
        proj = OASISProjectionUNet(n)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(unet) == 22_258_904  # the official count (fact sheet)
    first_block_extra = n * 128 * 9 + n * 128  # conv1 3x3 and the 1x1 shortcut see N more input channels
    head_diff = (64 * (n + 1) + n + 1) - (64 + 1)
    assert count(concat) == count(unet) + first_block_extra - head_diff
    assert count(proj) == count(unet) - head_diff + n * 64  # + the class embedding (no bias)


def test_gradients_reach_image_and_every_parameter():
    ids = torch.randint(0, N, (2, 32, 32))
    for name in ("oasis-encoder", "oasis-unet-concat", "oasis-unet-projection"):
        d = build(name)
        image = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
        out = d(image, cond_for(ids))
        F.binary_cross_entropy_with_logits(out.logits, torch.ones_like(out.logits)).backward()
        assert image.grad.abs().sum() > 0, name
        assert all(p.grad is not None for p in d.parameters()), name


@pytest.mark.parametrize("balancing", [True, False])
def test_unet_as_n_plus_one_ground_truth_with_and_without_class_balancing(balancing):
    cfg, _ = resolve({"model.preset": "oasis", "data.name": "demo",
                      "model.objective_options": {"balancing": balancing}})
    parts = resolve_parts(cfg)
    assert (parts.discriminator, parts.objective, parts.objective_options) == ("oasis-unet", "n+1",
                                                                               {"balancing": balancing})
    objective = build_objective(parts)
    n = parts.num_classes
    # one image: class 1 on 1/8 of the pixels, class 2 on the rest; a D that is uniformly unsure
    ids = torch.full((1, 8, 8), 2)
    ids[0, 0] = 1
    logits = torch.zeros(1, n + 1, 8, 8)
    logits[:, 3] = 2.0  # favours class 2 (channel 3) everywhere: right on 7/8 of the pixels
    loss = objective.d_loss(logits, cond_for(ids, n), "real")
    ce = F.cross_entropy(logits, ids + 1, reduction="none")
    if balancing:  # w_c = B*H*W / (K * count_c), K = 2 classes present
        w = torch.where(ids == 1, torch.tensor(64 / (2 * 8)), torch.tensor(64 / (2 * 56)))
        expected = (w * ce).mean()
    else:
        expected = ce.mean()
    torch.testing.assert_close(loss, expected)
    d = build_discriminator(parts, num_res_blocks=4, width=0.125)
    assert isinstance(d, OASISDiscriminator)
