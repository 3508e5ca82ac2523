"""``timm-unet``: a U-Net discriminator on a (pretrained, frozen) timm backbone, the core idea of DP-SIMS.

Encoder: ``timm.create_model(backbone, features_only=True, pretrained=False)``, weights from a local file.
Each feature level is standardised and projected (see :mod:`gensynth_timm.decoder`), then a light
decoder (bilinear upsampling + skip concatenation + spectral-norm residual conv blocks) climbs back to
the input resolution, where a trainable stem on the image itself joins in. A 1x1 conv gives per-pixel
N+1 logits (channel 0 = fake, channel c+1 = class c), so the OASIS ``n+1`` objective and ``labelmix``
apply unchanged. Images in [-1, 1] are mapped to the backbone's ImageNet normalisation (mean/std from
its ``pretrained_cfg``).
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from gensynth.errors import ConfigError
from gensynth.interfaces import Condition, Discriminator, DiscriminatorOutput, DOutputKind
from gensynth.nn.spade import maybe_sn
from gensynth_timm.decoder import ConvBlock, FeatureConditioner, UpStage
from gensynth_timm.options import TimmUNetOptions
from gensynth.nn.backbone_weights import load_backbone_weights


def _options(options: dict[str, Any]) -> TimmUNetOptions:
    try:
        return TimmUNetOptions.model_validate(options)
    except ValidationError as exc:
        lines = ["invalid model.discriminator_options for 'timm-unet':"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            lines.append(f"  model.discriminator_options.{loc} = {err.get('input')!r}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def create_encoder(opts: TimmUNetOptions) -> nn.Module:
    """The timm features_only backbone (random weights). Raises ConfigError naming the backbone."""
    import timm

    kwargs = dict(opts.backbone_kwargs)
    if opts.out_indices is not None:
        kwargs["out_indices"] = tuple(opts.out_indices)
    try:
        return timm.create_model(opts.backbone, features_only=True, pretrained=False, **kwargs)
    except Exception as exc:
        raise ConfigError(f"timm-unet: cannot create backbone {opts.backbone!r} with features_only=True "
                          f"(model.discriminator_options: backbone, out_indices, backbone_kwargs): {exc}") from None


class TimmUNetDiscriminator(Discriminator):
    """Per-pixel N+1 U-Net discriminator on a timm backbone.

    forward(image (B, 3, H, W) in [-1, 1], cond ignored) -> DiscriminatorOutput(PIXEL_CLASSES,
    logits (B, N+1, H, W)). Options: :class:`gensynth_timm.options.TimmUNetOptions`.
    """

    output_kind = DOutputKind.PIXEL_CLASSES
    provides_features = False
    takes_labels = False

    def __init__(self, num_classes: int, **options: Any):
        super().__init__()
        opts = _options(options)
        self.options = opts
        self.num_classes = int(num_classes)
        self.encoder = create_encoder(opts)
        info = self.encoder.feature_info
        channels = list(info.channels())
        self.reductions = list(info.reduction())
        widths = opts.decoder_channels or [min(64 * 2 ** i, 256) for i in range(len(channels))]
        if len(widths) != len(channels):
            raise ConfigError(
                f"model.discriminator_options.decoder_channels = {opts.decoder_channels}: backbone "
                f"{opts.backbone!r} gives {len(channels)} feature levels (channels {channels}, strides "
                f"{self.reductions}), so give {len(channels)} widths, shallow to deep")
        self.widths = widths
        cfg = getattr(self.encoder, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", (0.5, 0.5, 0.5)), cfg.get("std", (0.5, 0.5, 0.5))
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

        sn = opts.spectral
        self.conditioners = nn.ModuleList(
            FeatureConditioner(c, w, opts.feature_norm, sn) for c, w in zip(channels, widths))
        self.bottleneck = ConvBlock(widths[-1], widths[-1], sn)
        # ups[i] fuses the state coming from level i+1 into level i
        self.ups = nn.ModuleList(UpStage(widths[i + 1], widths[i], widths[i], sn) for i in range(len(widths) - 1))
        self.stem = maybe_sn(nn.Conv2d(3, opts.head_channels, 3, padding=1), sn)
        self.up_full = UpStage(widths[0], opts.head_channels, opts.head_channels, sn)
        self.head = nn.Conv2d(opts.head_channels, self.num_classes + 1, 1)

        if opts.weights_path is not None:
            load_backbone_weights(self.encoder, opts.weights_path, opts.backbone)
        elif opts.freeze_encoder:
            warnings.warn(f"timm-unet: backbone {opts.backbone!r} is frozen but has no pretrained weights "
                          f"(model.discriminator_options.weights_path is unset): it stays a random feature "
                          f"extractor. Set weights_path, or freeze_encoder=false to train it.", stacklevel=2)
        if opts.freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    @property
    def frozen(self) -> bool:
        return self.options.freeze_encoder

    def train(self, mode: bool = True) -> "TimmUNetDiscriminator":
        """As nn.Module.train, but a frozen encoder stays in eval mode (fixed BN statistics)."""
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def normalise(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> the backbone's ImageNet-normalised input."""
        return ((image + 1) * 0.5 - self.pixel_mean.to(image.dtype)) / self.pixel_std.to(image.dtype)

    def forward(self, image: Tensor, cond: Condition | None = None) -> DiscriminatorOutput:
        """image (B, 3, H, W) -> logits (B, N+1, H, W). Gradients reach ``image`` even when frozen."""
        x = self.normalise(image)
        feats = self.encoder(x)
        if isinstance(feats, dict):
            feats = list(feats.values())
        projected = [cond_(f) for cond_, f in zip(self.conditioners, feats)]
        h = self.bottleneck(projected[-1])
        for i in range(len(projected) - 2, -1, -1):
            h = self.ups[i](h, projected[i])
        h = self.up_full(h, self.stem(x))
        logits = self.head(torch.nn.functional.leaky_relu(h, 0.2))
        return DiscriminatorOutput(self.output_kind, logits)
