"""gensynth.nn.resample: nearest upsampling read as NHWC on the CPU, equal to F.interpolate."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gensynth.nn.conv import set_input_layout
from gensynth.nn.resample import UpsampleNearest, upsample_nearest


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
@pytest.mark.parametrize("scale", [2, 3])
def test_values_and_gradient_equal_interpolate(layout, scale):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 5, 4, 6, generator=g, dtype=torch.float64)
    if layout == "nhwc":
        base = base.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # neither layout: every other column of a wider map
        base = torch.randn(2, 5, 4, 12, generator=g, dtype=torch.float64)[..., ::2]
    x1 = base.detach().requires_grad_(True)  # base itself, with its strides
    x2 = base.detach().clone().requires_grad_(True)
    y1 = upsample_nearest(x1, scale)
    y2 = F.interpolate(x2, scale_factor=scale, mode="nearest")
    assert y1.shape == (2, 5, 4 * scale, 6 * scale)
    assert torch.equal(y1, y2)
    assert y1.is_contiguous(memory_format=torch.channels_last)
    # a pixel's value is its source pixel's
    assert y1[1, 3, 2 * scale + scale - 1, 5 * scale] == base[1, 3, 2, 5]
    grad = torch.randn(y1.shape, generator=g, dtype=torch.float64)
    y1.backward(grad)
    y2.backward(grad)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-12, atol=1e-12)
    # the gradient of a source pixel is the sum over its scale x scale block
    torch.testing.assert_close(x1.grad[0, 1, 3, 2], grad[0, 1, 3 * scale:4 * scale, 2 * scale:3 * scale].sum())


def test_keep_layout_upsamples_the_input_as_it_comes():
    x = torch.randn(1, 3, 4, 4)
    y = upsample_nearest(x, 2, layout="keep")
    assert y.is_contiguous() and torch.equal(y, F.interpolate(x, scale_factor=2, mode="nearest"))
    m = UpsampleNearest(2)
    m.input_layout = "keep"
    assert m(x).is_contiguous() and not m(x).is_contiguous(memory_format=torch.channels_last)


def test_set_input_layout_reaches_the_upsampling_of_both_generators_and_oasis_d():
    """trainer.channels_last = false ("keep": NCHW throughout) must not get NHWC maps from the upsampling."""
    from gensynth_oasis.discriminator import build_oasis_discriminator
    from gensynth_oasis.generator import build_oasis_generator
    from gensynth_spade.generator import build_spade_generator

    for model in (build_oasis_generator(4, channels=2, num_res_blocks=3, z_dim=2, spade_hidden=4),
                  build_spade_generator(4, ngf=2, num_upsampling_layers="normal", use_vae=False),
                  build_oasis_discriminator(4, num_res_blocks=2, width=1 / 32)):
        ups = [m for m in model.modules() if isinstance(m, UpsampleNearest)]
        assert ups and all(m.input_layout == "by_shape" for m in ups)
        set_input_layout(model, "keep")
        assert all(m.input_layout == "keep" for m in ups)


def test_module_matches_nn_upsample_and_has_no_state():
    m = UpsampleNearest(2)
    x = torch.randn(3, 4, 5, 5)
    assert torch.equal(m(x), nn.Upsample(scale_factor=2)(x))
    assert m.state_dict() == {} and list(m.parameters()) == []
    assert "scale_factor=2.0" in repr(m)


def test_oasis_discriminator_upsamples_through_it():
    from gensynth_oasis.discriminator import ResidualBlockD

    block = ResidualBlockD(8, 4, up_or_down=1)
    assert isinstance(block.conv1[1], UpsampleNearest) and isinstance(block.sampling, UpsampleNearest)
    # official key layout unchanged: conv1.0 = LeakyReLU, conv1.1 = Upsample (no keys), conv1.2 = the conv
    assert {k.split(".")[1] for k in block.state_dict() if k.startswith("conv1.")} == {"2"}
