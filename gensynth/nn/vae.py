"""The VAE image encoder of SPADE and CC-FPSE (``ConvEncoder``, re-implemented from its description), its
reparameterisation and its KL divergence term (registered by the core as the ``kl`` loss).

SPADE (NVlabs/SPADE) and CC-FPSE (xh-liu/CC-FPSE) use the same encoder, so it lives in the core and both plugins
build it from here.

The style image is resized (bilinear) to ``image_size`` x ``image_size`` (256 in SPADE), then passes through
log2(image_size / 4) stride-2 3x3 convolutions of widths ngf, 2ngf, 4ngf, 8ngf, 8ngf, 8ngf (capped at 8ngf),
each spectral-normed, instance-normed (no affine, no conv bias) and followed by LeakyReLU(0.2). The final
(8ngf, 4, 4) map is flattened into two linear heads giving ``mu`` and ``logvar`` of size ``z_dim``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensynth.errors import ConfigError
from gensynth.interfaces import Capability, LossTerm, StepContext
from gensynth.nn.spade import maybe_sn


def norm_conv(fin: int, fout: int, kernel: int, stride: int, padding: int, spectral: bool, norm: str) -> nn.Sequential:
    """conv (spectral-normed when ``spectral``) followed by a parameter-free norm.

    With a norm the conv has no bias (a bias before a normalisation has no effect), as SPADE's
    ``spectralinstance`` layers. ``norm``: 'instance' or 'none'.
    """
    if norm not in ("instance", "none"):
        raise ValueError(f"norm must be 'instance' or 'none', got {norm!r}")
    conv = maybe_sn(nn.Conv2d(fin, fout, kernel, stride=stride, padding=padding, bias=norm == "none"), spectral)
    layers: list[nn.Module] = [conv]
    if norm == "instance":
        layers.append(nn.InstanceNorm2d(fout, affine=False))
    return nn.Sequential(*layers)


class ConvEncoder(nn.Module):
    """Style image (B, 3, H, W) in [-1, 1] -> (mu, logvar), each (B, z_dim).

    ngf: base width (SPADE uses the generator's ngf); image_size: resolution the image is resized to
    (a power of two >= 8; 256 as SPADE); z_dim: latent size (256 as SPADE).
    """

    def __init__(self, ngf: int = 64, z_dim: int = 256, image_size: int = 256, spectral: bool = True,
                 norm: str = "instance"):
        super().__init__()
        n_layers = int(round(math.log2(image_size / 4)))
        if image_size < 8 or 4 * 2 ** n_layers != image_size:
            raise ValueError(f"encoder image_size must be a power of two >= 8, got {image_size}")
        self.image_size = image_size
        widths = [ngf * min(2 ** i, 8) for i in range(n_layers)]
        fin = 3
        self.layers = nn.ModuleList()
        for w in widths:
            self.layers.append(norm_conv(fin, w, 3, 2, 1, spectral, norm))
            fin = w
        self.fc_mu = nn.Linear(fin * 4 * 4, z_dim)
        self.fc_var = nn.Linear(fin * 4 * 4, z_dim)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """image: (B, 3, H, W) -> mu (B, z_dim), logvar (B, z_dim)."""
        if image.shape[-2:] != (self.image_size, self.image_size):
            image = F.interpolate(image, size=(self.image_size, self.image_size), mode="bilinear",
                                  align_corners=False)
        x = image
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2)
        x = x.flatten(1)
        return self.fc_mu(x), self.fc_var(x)


def reparameterize(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """z = mu + eps * exp(0.5 * logvar), eps ~ N(0, I); all (B, z_dim)."""
    eps = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator)
    return mu + eps * torch.exp(0.5 * logvar)


def start_map(fc: nn.Module, seg: Tensor, style_image: Tensor | None, z: Tensor | None, start: tuple[int, int], *,
              use_vae: bool, size: tuple[int, int] | None, z_dim: int, channels: int, encode, what: str
              ) -> tuple[Tensor, dict[str, Tensor]]:
    """The first feature map of a SPADE-style generator (SPADE, CC-FPSE) and the VAE's aux outputs.

    With ``use_vae``: ``z`` (B, z_dim), else the style image's encoding (``encode(style_image) -> mu, logvar``,
    reparameterised; aux ``mu``/``logvar``), else N(0, I); ``fc`` (Linear z_dim -> channels * h * w, built for the
    training ``size``) gives (B, channels, h, w). Without: ``fc`` (a 3x3 convolution) of the label map ``seg``
    (B, C, H, W) resized (nearest) to ``start`` = (h, w). ValueError naming ``what`` for a size or ``z`` the head
    was not built for."""
    B, _, H, W = seg.shape
    if not use_vae:
        return fc(F.interpolate(seg, size=start, mode="nearest")), {}
    if size is not None and (H, W) != tuple(size):
        raise ValueError(f"this {what} generator's VAE head was built for size {size[0]}x{size[1]} "
                         f"(model.generator_options.size), got labels of {H}x{W}")
    aux: dict[str, Tensor] = {}
    if z is None:
        if style_image is not None:
            mu, logvar = encode(style_image)
            z = reparameterize(mu, logvar)
            aux = {"mu": mu, "logvar": logvar}
        else:
            z = torch.randn(B, z_dim, device=seg.device, dtype=seg.dtype)
    if z.dim() != 2 or z.shape[1] != z_dim:
        raise ValueError(f"z must be (B, {z_dim}), got {tuple(z.shape)}")
    return fc(z).view(B, channels, start[0], start[1]), aux


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over batch and dimensions, as SPADE and CC-FPSE:
    -0.5 * sum(1 + logvar - mu^2 - exp(logvar)). mu, logvar: (B, z_dim) -> scalar."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


class KLDLoss(LossTerm):
    """KL divergence of a VAE encoder's output from N(0, I) (SPADE and CC-FPSE: weight 0.05)."""

    side = "G"
    requires = frozenset({Capability.GENERATOR_AUX})
    default_weight = 0.05

    def __call__(self, ctx: StepContext) -> Tensor:
        aux = ctx.gen.aux if ctx.gen is not None else {}
        if "mu" not in aux or "logvar" not in aux:
            raise ConfigError("the 'kl' loss needs the generator's mu and logvar: use a generator with a style "
                              "encoder (spade or cc-fpse with use_vae=true) and pass the real image as "
                              "cond.style_image (the spade and cc-fpse presets' training method does), or set "
                              "model.losses.kl=0")
        return kl_divergence(aux["mu"], aux["logvar"])
