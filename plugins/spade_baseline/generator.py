"""The SPADE generator (Park et al. 2019), written from the facts of NVlabs/SPADE.

Channel plan with nf = ngf: head_0, G_middle_0, G_middle_1 at 16nf; up_0 16nf->8nf, up_1 8nf->4nf,
up_2 4nf->2nf, up_3 2nf->nf, and with ``most`` also up_4 nf->nf/2. Nearest x2 upsampling between blocks
(an extra one between the middle blocks for ``more``/``most``); final LeakyReLU(0.2) -> conv 3x3 -> tanh.
The start map is (H / 2^n, W / 2^n) with n = 5 (normal), 6 (more) or 7 (most) doublings. Its input is
either the label map downsampled (nearest) through a 3x3 conv, or, with ``use_vae``, a Linear layer from
the latent z (B, z_dim).
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from gensynth.interfaces import Condition, Generator, GeneratorOutput, NoiseKind, as_condition
from gensynth.nn.resample import UpsampleNearest
from gensynth.nn.spade import SPADEResBlock, init_xavier, segmentation_input

from gensynth.nn.vae import ConvEncoder, start_map

UPSAMPLINGS = {"normal": 5, "more": 6, "most": 7}


class SpadeGeneratorOptions(BaseModel):
    """Options of the ``spade`` generator (model.generator_options)."""

    model_config = ConfigDict(extra="forbid")

    ngf: int = Field(64, ge=1, description="base width nf; blocks use 16nf ... nf")
    num_upsampling_layers: Literal["normal", "more", "most"] = Field(
        "normal", description="5, 6 or 7 doublings from the start map (Cityscapes: more)")
    use_vae: bool = Field(False, description="start from a latent z (B, z_dim) and encode style images (VAE)")
    z_dim: int = Field(256, ge=1, description="latent size with use_vae")
    size: Optional[tuple[int, int]] = Field(
        None, description="(H, W) output size; fixes the Linear head with use_vae (default 256x256)")
    encoder_size: int = Field(256, ge=8, description="resolution the VAE encoder resizes style images to")
    use_instance_edges: bool = Field(False, description="concatenate the instance edge map after the labels")
    norm: Literal["syncbatch", "batch", "instance"] = Field(
        "syncbatch", description="parameter-free norm inside SPADE (syncbatch: BatchNorm2d, synced on multi-GPU)")
    spectral: bool = Field(True, description="spectral norm on the residual blocks' convs")
    spade_hidden: int = Field(128, ge=1, description="width of SPADE's shared conv (128 in SPADE; smaller for demos)")
    init_gain: float = Field(0.02, gt=0, description="xavier_normal gain (SPADE's init_variance)")


class SpadeGenerator(Generator):
    """Condition -> image (B, 3, H, W) in [-1, 1].

    Input channels of every SPADE layer: num_classes (+1 with ``use_instance_edges``). With ``use_vae``
    the noise kind is VECTOR: ``z`` is (B, z_dim); when z is None it is encoded from ``cond.style_image``
    (then GeneratorOutput.aux holds ``mu`` and ``logvar``, each (B, z_dim)) or sampled from N(0, I).
    """

    def __init__(self, num_classes: int, ngf: int = 64, num_upsampling_layers: str = "normal",
                 use_vae: bool = False, z_dim: int = 256, size: tuple[int, int] | None = None,
                 encoder_size: int = 256, use_instance_edges: bool = False, norm: str = "syncbatch",
                 spectral: bool = True, spade_hidden: int = 128, init_gain: float = 0.02):
        super().__init__()
        if num_upsampling_layers not in UPSAMPLINGS:
            raise ValueError(f"num_upsampling_layers must be one of {list(UPSAMPLINGS)}, got {num_upsampling_layers!r}")
        self.num_classes = num_classes
        self.uses_instance_edges = use_instance_edges
        self.uses_style_image = use_vae
        self.use_vae = use_vae
        self.wants_sync_bn = norm in ("syncbatch", "batch")
        self.num_up = UPSAMPLINGS[num_upsampling_layers]
        self.num_upsampling_layers = num_upsampling_layers
        self.z_dim = z_dim if use_vae else 0
        self.noise = NoiseKind.VECTOR if use_vae else NoiseKind.NONE  # instance attribute shadows the ClassVar
        self.size = tuple(size) if size is not None else (256, 256)
        nf = ngf
        self.nf = nf
        label_nc = num_classes + (1 if use_instance_edges else 0)
        self.label_nc = label_nc
        if use_vae:
            sh, sw = self._start_size(self.size)
            self.fc = nn.Linear(z_dim, 16 * nf * sh * sw)
            self.encoder = ConvEncoder(ngf=nf, z_dim=z_dim, image_size=encoder_size, spectral=spectral)
        else:
            self.fc = nn.Conv2d(label_nc, 16 * nf, 3, padding=1)
            self.encoder = None

        def block(fin: int, fout: int) -> SPADEResBlock:
            return SPADEResBlock(fin, fout, label_nc, spectral=spectral, norm=norm, hidden=spade_hidden)

        self.head_0 = block(16 * nf, 16 * nf)
        self.G_middle_0 = block(16 * nf, 16 * nf)
        self.G_middle_1 = block(16 * nf, 16 * nf)
        self.up_0 = block(16 * nf, 8 * nf)
        self.up_1 = block(8 * nf, 4 * nf)
        self.up_2 = block(4 * nf, 2 * nf)
        self.up_3 = block(2 * nf, nf)
        final_nc = nf
        if num_upsampling_layers == "most":
            self.up_4 = block(nf, nf // 2)
            final_nc = nf // 2
        self.conv_img = nn.Conv2d(final_nc, 3, 3, padding=1)
        self.up = UpsampleNearest(2)  # no parameters: the official keys are unchanged
        init_xavier(self, gain=init_gain)

    # ------------------------------------------------------------------------------------------
    def _start_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the output -> (sh, sw) of the start map; both must be multiples of 2^num_up."""
        f = 2 ** self.num_up
        h, w = size
        if h % f or w % f:
            raise ValueError(
                f"the SPADE generator with num_upsampling_layers={self.num_upsampling_layers!r} doubles the start "
                f"map {self.num_up} times, so the label size must be a multiple of {f}; got {h}x{w}")
        return h // f, w // f

    def generator_parameters(self) -> list[nn.Parameter]:
        """The generator's own parameters (without the VAE encoder's), e.g. for parameter counts."""
        enc = set(id(p) for p in self.encoder.parameters()) if self.encoder is not None else set()
        return [p for p in self.parameters() if id(p) not in enc]

    def segmap(self, cond: Condition) -> Tensor:
        """(B, num_classes [+1], H, W): the one-hot labels, then the instance edge map when used."""
        return segmentation_input(cond, self.num_classes, self.uses_instance_edges, "SPADE")

    def encode(self, style_image: Tensor) -> tuple[Tensor, Tensor]:
        """style_image (B, 3, H, W) -> mu, logvar (B, z_dim)."""
        if self.encoder is None:
            raise ValueError("this SPADE generator has no style encoder (use_vae=false)")
        return self.encoder(style_image)

    def forward(self, cond: Condition | Tensor, z: Tensor | None = None) -> GeneratorOutput:
        """cond: labels (B, N, H, W) [+ instance_edges, style_image]; z: (B, z_dim) with use_vae."""
        cond = as_condition(cond)
        seg = self.segmap(cond)
        B, _, H, W = seg.shape
        sh, sw = self._start_size((H, W))
        x, aux = start_map(self.fc, seg, cond.style_image, z, (sh, sw), use_vae=self.use_vae, size=self.size,
                           z_dim=self.z_dim, channels=16 * self.nf, encode=self.encode, what="SPADE")

        x = self.head_0(x, seg)
        x = self.up(x)
        x = self.G_middle_0(x, seg)
        if self.num_up > 5:
            x = self.up(x)
        x = self.G_middle_1(x, seg)
        for blk in (self.up_0, self.up_1, self.up_2, self.up_3):
            x = self.up(x)
            x = blk(x, seg)
        if self.num_up == 7:
            x = self.up(x)
            x = self.up_4(x, seg)
        image = torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))
        return GeneratorOutput(image=image, aux=aux)


def build_spade_generator(num_classes: int, **options) -> SpadeGenerator:
    """Factory registered as ``spade``: validates the options, then builds the generator."""
    opts = SpadeGeneratorOptions.model_validate(options).model_dump()
    return SpadeGenerator(num_classes=num_classes, **opts)
