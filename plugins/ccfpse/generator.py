"""The CC-FPSE generator ``CondConvGenerator`` (Liu et al., NeurIPS 2019), written from the facts of xh-liu/CC-FPSE.

Width nf = ngf; S = the label channels (one-hot classes, don't-care last, then the instance-edge map when used).

* **Label pyramid** (the "global-context-aware weight prediction network"): every conv is nf wide, spectral-normed
  without bias, followed by BatchNorm2d(affine) and LeakyReLU(0.2). ``labelenc1`` (3x3, S -> nf, stride 1) then
  ``labelenc2..6`` (3x3, stride 2; ``labelenc7`` too in ``more`` mode); top-down
  ``out_{k+1} = labeldec_k(up2(out_k) + labellat_k(enc at that resolution))`` with nearest upsampling, 1x1 laterals
  and 3x3 decoders; the coarsest encoder output is the first pyramid level.
* **Seven** :class:`DepthsepCCBlock` s (head_0, G_middle_0, G_middle_1: 16nf; up_0..up_3: 16nf -> 8nf -> 4nf -> 2nf
  -> nf), each conditioned on ``[nearest-resized labels ; pyramid level]`` (S + nf channels), with SPADE's
  upsampling pattern (an extra one between the middle blocks in ``more`` mode).
* **Input head**: ``Linear(z_dim -> 16nf * sh * sw)`` with the VAE, else the labels resized (nearest) to
  (sh, sw) through a 3x3 conv S -> 16nf; (sh, sw) = (H, W) / 2^5 (normal) or 2^6 (more, Cityscapes).
* **Output**: LeakyReLU(0.2) -> conv 3x3 (nf -> 3, plain) -> tanh.

Module names are those of the official code, so the official state dicts load by name (see importer.py).
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from gensynth.interfaces import Condition, Generator, GeneratorOutput, NoiseKind, as_condition
from gensynth.nn.conv import Conv2d
from gensynth.nn.resample import UpsampleNearest
from gensynth.nn.spade import SPADE, init_xavier, maybe_sn, segmentation_input
from gensynth.nn.vae import ConvEncoder, start_map

from gensynth_ccfpse.depthconv import depthwise_per_pixel

UPSAMPLINGS = {"normal": 5, "more": 6}
#: which pyramid level (0 = coarsest) conditions each block, per mode
BLOCK_LEVELS = {"normal": (0, 1, 1, 2, 3, 4, 5), "more": (0, 1, 2, 3, 4, 5, 6)}
BLOCKS = ("head_0", "G_middle_0", "G_middle_1", "up_0", "up_1", "up_2", "up_3")


class CondConvGeneratorOptions(BaseModel):
    """Options of the ``cc-fpse`` generator (model.generator_options)."""

    model_config = ConfigDict(extra="forbid")

    ngf: int = Field(64, ge=1, description="base width nf: blocks 16nf ... nf, label pyramid nf")
    num_upsampling_layers: Literal["normal", "more"] = Field(
        "normal", description="5 or 6 doublings from the start map (the official code: more for Cityscapes)")
    use_vae: bool = Field(False, description="start from a latent z (B, z_dim) and encode style images (VAE)")
    z_dim: int = Field(256, ge=1, description="latent size with use_vae")
    size: Optional[tuple[int, int]] = Field(
        None, description="(H, W) output size; fixes the Linear head with use_vae (default 256x256)")
    encoder_size: int = Field(256, ge=8, description="resolution the VAE encoder resizes style images to")
    use_instance_edges: bool = Field(False, description="append the instance edge map to the labels")
    hidden: int = Field(128, ge=1, description="hidden width of the kernel/gate predictors and of the shortcut "
                                               "SPADE (128 in CC-FPSE; smaller for demos)")
    spectral: bool = Field(True, description="spectral norm on the label pyramid and the shortcut convs")
    depthwise: Literal["shifted", "unfold"] = Field(
        "shifted", description="per-pixel depthwise conv: sum of 9 shifted products (less memory) or F.unfold "
                               "(the official way); same numbers")
    unused_bn: bool = Field(True, description="keep the official code's never-applied BatchNorm layers (26,112 "
                                              "parameters at ngf 64) as frozen parameters, so official checkpoints "
                                              "load strictly; false drops them")
    init_gain: float = Field(0.02, gt=0, description="xavier_normal gain; BatchNorm weights N(1, gain)")


def sn_bn_lrelu(fin: int, fout: int, kernel: int, stride: int, spectral: bool) -> nn.Sequential:
    """``Sequential(Sequential(sn(conv, no bias), BatchNorm2d(affine)), LeakyReLU(0.2))``: the official
    ``norm_layer(conv)`` + activation of the label pyramid (keys ``<name>.0.0.weight_orig``, ``<name>.0.1.weight``)."""
    conv = maybe_sn(nn.Conv2d(fin, fout, kernel, stride=stride, padding=kernel // 2, bias=False), spectral)
    return nn.Sequential(nn.Sequential(conv, nn.BatchNorm2d(fout, affine=True)), nn.LeakyReLU(0.2))


def frozen_batchnorm(channels: int) -> nn.BatchNorm2d:
    """A BatchNorm2d the official code creates but never applies: kept for its state-dict keys, frozen (its
    parameters never receive gradients, so DDP needs no find_unused_parameters)."""
    bn = nn.BatchNorm2d(channels, affine=True)
    bn.requires_grad_(False)
    return bn


class DepthConv(nn.Module):
    """The per-pixel depthwise 3x3 conv: x (N, C, H, W), kernels (N, 9C, H, W) -> (N, C, H, W).

    ``norm_layer`` is the official module's BatchNorm, never applied (present only with ``unused_bn``)."""

    def __init__(self, channels: int, impl: str = "shifted", unused_bn: bool = True):
        super().__init__()
        self.channels = channels
        self.impl = impl
        if unused_bn:
            self.norm_layer = frozen_batchnorm(channels)

    def forward(self, x: Tensor, kernels: Tensor) -> Tensor:
        return depthwise_per_pixel(x, kernels, self.impl)

    def extra_repr(self) -> str:
        return f"{self.channels}, impl={self.impl}"


def predictor(cond_nc: int, hidden: int, out: int, gate: bool) -> nn.Sequential:
    """``Conv3x3(cond_nc -> hidden) -> ReLU -> Conv3x3(hidden -> out)`` (+ Sigmoid for a gate); plain convs."""
    layers: list[nn.Module] = [Conv2d(cond_nc, hidden, 3, padding=1), nn.ReLU(), Conv2d(hidden, out, 3, padding=1)]
    if gate:
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


class DepthsepCCBlock(nn.Module):
    """CC-FPSE's conditional-convolution residual block: x (B, fin, H, W), cond (B, cond_nc, h, w) -> (B, fout, H, W).

    cond is resized (nearest) to (H, W). fmiddle = min(fin, fout) = fout (the block needs fout <= fin, as the
    official one). Residual path: BN(fin) -> per-pixel depthwise(kernels1) -> 1x1 fin->fmiddle -> x gate1 -> lrelu
    -> BN(fmiddle) -> per-pixel depthwise(kernels2) -> 1x1 fmiddle->fout -> x gate2 -> lrelu. Shortcut: identity, or
    spectral-normed 1x1 (no bias) on SPADE(fin) with a BatchNorm parameter-free norm when fin != fout.
    """

    def __init__(self, fin: int, fout: int, cond_nc: int, hidden: int = 128, spectral: bool = True,
                 depthwise: str = "shifted", unused_bn: bool = True):
        super().__init__()
        if fout > fin:
            raise ValueError(f"DepthsepCCBlock needs fout <= fin (its second kernels are predicted for fout "
                             f"channels), got fin={fin}, fout={fout}")
        fmiddle = min(fin, fout)
        self.fin, self.fout, self.fmiddle = fin, fout, fmiddle
        self.learned_shortcut = fin != fout
        self.gen_weights1 = predictor(cond_nc, hidden, fin * 9, gate=False)
        self.gen_weights2 = predictor(cond_nc, hidden, fout * 9, gate=False)
        self.gen_se_weights1 = predictor(cond_nc, hidden, fmiddle, gate=True)
        self.gen_se_weights2 = predictor(cond_nc, hidden, fout, gate=True)
        self.conv_0 = DepthConv(fin, depthwise, unused_bn)
        if unused_bn:
            self.norm_0 = frozen_batchnorm(fmiddle)
        self.conv_1 = Conv2d(fin, fmiddle, 1)
        self.norm_1 = nn.BatchNorm2d(fin, affine=True)
        self.conv_2 = DepthConv(fmiddle, depthwise, unused_bn)
        self.norm_2 = nn.BatchNorm2d(fmiddle, affine=True)
        self.conv_3 = Conv2d(fmiddle, fout, 1)
        if self.learned_shortcut:
            self.conv_s = maybe_sn(nn.Conv2d(fin, fout, 1, bias=False), spectral)
            self.norm_s = SPADE(fin, cond_nc, hidden, 3, norm="batch")

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        if tuple(cond.shape[-2:]) != tuple(x.shape[-2:]):
            cond = F.interpolate(cond, size=x.shape[-2:], mode="nearest")
        x_s = self.conv_s(self.norm_s(x, cond)) if self.learned_shortcut else x
        dx = self.conv_0(self.norm_1(x), self.gen_weights1(cond))
        dx = F.leaky_relu(self.conv_1(dx) * self.gen_se_weights1(cond), 0.2)
        dx = self.conv_2(self.norm_2(dx), self.gen_weights2(cond))
        dx = F.leaky_relu(self.conv_3(dx) * self.gen_se_weights2(cond), 0.2)
        return x_s + dx


class CondConvGenerator(Generator):
    """Condition -> image (B, 3, H, W) in [-1, 1] (CC-FPSE's generator).

    Label channels S = num_classes (+1 with ``use_instance_edges``). With ``use_vae`` the noise kind is VECTOR:
    ``z`` (B, z_dim); when z is None it is encoded from ``cond.style_image`` (GeneratorOutput.aux then holds ``mu``
    and ``logvar`` (B, z_dim)) or sampled from N(0, I). H and W must be multiples of 2^5 (normal) or 2^6 (more).
    """

    wants_sync_bn = True

    def __init__(self, num_classes: int, ngf: int = 64, num_upsampling_layers: str = "normal",
                 use_vae: bool = False, z_dim: int = 256, size: tuple[int, int] | None = None,
                 encoder_size: int = 256, use_instance_edges: bool = False, hidden: int = 128,
                 spectral: bool = True, depthwise: str = "shifted", unused_bn: bool = True,
                 init_gain: float = 0.02):
        super().__init__()
        if num_upsampling_layers not in UPSAMPLINGS:
            raise ValueError(f"num_upsampling_layers must be one of {list(UPSAMPLINGS)}, got {num_upsampling_layers!r}")
        self.num_classes = num_classes
        self.uses_instance_edges = use_instance_edges
        self.uses_style_image = use_vae
        self.use_vae = use_vae
        self.mode = num_upsampling_layers
        self.num_up = UPSAMPLINGS[num_upsampling_layers]
        self.z_dim = z_dim if use_vae else 0
        self.noise = NoiseKind.VECTOR if use_vae else NoiseKind.NONE  # instance attribute shadows the ClassVar
        self.size = tuple(size) if size is not None else (256, 256)
        self.nf = nf = ngf
        self.semantic_nc = s = num_classes + (1 if use_instance_edges else 0)
        if use_vae:
            sh, sw = self._start_size(self.size)
            self.fc = nn.Linear(z_dim, 16 * nf * sh * sw)
            self.encoder = ConvEncoder(ngf=nf, z_dim=z_dim, image_size=encoder_size, spectral=spectral)
        else:
            self.fc = nn.Conv2d(s, 16 * nf, 3, padding=1)
            self.encoder = None
        levels = self.num_up + 1  # pyramid levels: 6 (normal) or 7 (more)
        self.labelenc1 = sn_bn_lrelu(s, nf, 3, 1, spectral)
        for i in range(2, levels + 1):
            setattr(self, f"labelenc{i}", sn_bn_lrelu(nf, nf, 3, 2, spectral))
        for i in range(1, levels):
            setattr(self, f"labellat{i}", sn_bn_lrelu(nf, nf, 1, 1, spectral))
        for i in range(1, levels):
            setattr(self, f"labeldec{i}", sn_bn_lrelu(nf, nf, 3, 1, spectral))
        cond_nc = s + nf
        widths = (16 * nf, 16 * nf, 16 * nf, 16 * nf, 8 * nf, 4 * nf, 2 * nf, nf)
        for name, fin, fout in zip(BLOCKS, widths[:-1], widths[1:]):
            setattr(self, name, DepthsepCCBlock(fin, fout, cond_nc, hidden, spectral, depthwise, unused_bn))
        self.conv_img = nn.Conv2d(nf, 3, 3, padding=1)
        self.up = UpsampleNearest(2)
        self._init_weights(init_gain)

    def _init_weights(self, gain: float) -> None:
        """The official init: xavier_normal(gain) on Conv/Linear weights (``weight_orig`` under spectral norm), zero
        biases, BatchNorm weights N(1, gain) and zero biases."""
        init_xavier(self, gain=gain)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d) and m.affine and m.weight.device.type != "meta":
                with torch.no_grad():
                    m.weight.normal_(1.0, gain)
                    m.bias.zero_()

    # ------------------------------------------------------------------------------------------
    def _start_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the output -> (sh, sw) of the start map; both must be multiples of 2^num_up."""
        f = 2 ** self.num_up
        h, w = size
        if h % f or w % f:
            raise ValueError(
                f"the cc-fpse generator with num_upsampling_layers={self.mode!r} doubles the start map {self.num_up} "
                f"times, so the label size must be a multiple of {f}; got {h}x{w}")
        return h // f, w // f

    def generator_parameters(self) -> list[nn.Parameter]:
        """The generator's own parameters (without the VAE encoder's), e.g. for parameter counts."""
        enc = set(id(p) for p in self.encoder.parameters()) if self.encoder is not None else set()
        return [p for p in self.parameters() if id(p) not in enc]

    def segmap(self, cond: Condition) -> Tensor:
        """(B, S, H, W): the one-hot labels, then the instance edge map when used."""
        return segmentation_input(cond, self.num_classes, self.uses_instance_edges, "cc-fpse")

    def label_pyramid(self, seg: Tensor) -> list[Tensor]:
        """seg (B, S, H, W) -> pyramid levels, coarsest first: (B, nf, H / 2^k, W / 2^k) for k = num_up .. 0."""
        levels = self.num_up + 1
        enc = [self.labelenc1(seg)]
        for i in range(2, levels + 1):
            enc.append(getattr(self, f"labelenc{i}")(enc[-1]))
        out = [enc[-1]]
        for i in range(1, levels):
            lateral = getattr(self, f"labellat{i}")(enc[levels - 1 - i])
            out.append(getattr(self, f"labeldec{i}")(self.up(out[-1]) + lateral))
        return out

    def encode(self, style_image: Tensor) -> tuple[Tensor, Tensor]:
        """style_image (B, 3, H, W) -> mu, logvar (B, z_dim)."""
        if self.encoder is None:
            raise ValueError("this cc-fpse generator has no style encoder (use_vae=false)")
        return self.encoder(style_image)

    def forward(self, cond: Condition | Tensor, z: Tensor | None = None) -> GeneratorOutput:
        """cond: labels (B, N, H, W) [+ instance_edges, style_image]; z: (B, z_dim) with use_vae."""
        cond = as_condition(cond)
        seg = self.segmap(cond)
        B, _, H, W = seg.shape
        sh, sw = self._start_size((H, W))
        x, aux = start_map(self.fc, seg, cond.style_image, z, (sh, sw), use_vae=self.use_vae, size=self.size,
                           z_dim=self.z_dim, channels=16 * self.nf, encode=self.encode, what="cc-fpse")
        pyramid = self.label_pyramid(seg)
        for name, level in zip(BLOCKS, BLOCK_LEVELS[self.mode]):
            if name != "head_0" and not (name == "G_middle_1" and self.mode == "normal"):
                x = self.up(x)
            feature = pyramid[level]
            labels = F.interpolate(seg, size=feature.shape[-2:], mode="nearest")
            x = getattr(self, name)(x, torch.cat([labels, feature], dim=1))
        image = torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))
        return GeneratorOutput(image=image, aux=aux)


def build_cc_fpse_generator(num_classes: int, **options) -> CondConvGenerator:
    """Factory registered as ``cc-fpse``: validates the options, then builds the generator."""
    opts = CondConvGeneratorOptions.model_validate(options).model_dump()
    return CondConvGenerator(num_classes=num_classes, **opts)
