"""``dp-sims`` discriminator: a frozen pretrained timm backbone, feature conditioning, a trainable U-Net decoder.

image (B, 3, H, W) in [-1, 1] -> the backbone's ImageNet normalisation (``pretrained_cfg`` mean/std) -> L feature
maps (:class:`~gensynth_dpsims.backbone.FrozenPrefixBackbone`) -> each conditioned and projected
(:mod:`gensynth_dpsims.decoder`) -> residual up-blocks with skips from the deepest level to the shallowest, then
to full resolution where a trainable stem on the image joins -> 1x1 conv: per-pixel N+1 logits (channel 0 =
fake, c+1 = class c), so the OASIS ``n+1`` (or ``focal-n+1``) objective and LabelMix apply.
``features``: the conditioned backbone maps, [[f_1, ..., f_L]] (for ``patch-nce``).
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from gensynth.errors import ConfigError
from gensynth.interfaces import Condition, Discriminator, DiscriminatorOutput, DOutputKind
from gensynth.nn.backbone_weights import load_backbone_weights
from gensynth.nn.spade import maybe_sn
from gensynth_dpsims.backbone import FrozenPrefixBackbone, create_features_model
from gensynth_dpsims.decoder import FeatureConditioner, ResBlock, UpBlock
from gensynth_dpsims.options import DPSIMSDiscriminatorOptions

WEIGHTS_OPTION = "model.discriminator_options.dp-sims.weights_path"


def _options(options: dict[str, Any]) -> DPSIMSDiscriminatorOptions:
    try:
        return DPSIMSDiscriminatorOptions.model_validate(options)
    except ValidationError as exc:
        lines = ["invalid model.discriminator_options for 'dp-sims':"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            lines.append(f"  model.discriminator_options.dp-sims.{loc} = {err.get('input')!r}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def default_decoder_widths(levels: int) -> list[int]:
    """min(128 * 2^i, 512) per level, shallow to deep (UNPUBLISHED)."""
    return [min(128 * 2 ** i, 512) for i in range(levels)]


class DPSIMSDiscriminator(Discriminator):
    """Per-pixel N+1 U-Net discriminator on a (partly) frozen pretrained timm backbone.

    forward(image (B, 3, H, W), cond ignored) -> DiscriminatorOutput(PIXEL_CLASSES, logits (B, N+1, H, W),
    features [[conditioned backbone maps]]). Options: :class:`gensynth_dpsims.options.DPSIMSDiscriminatorOptions`.
    """

    output_kind = DOutputKind.PIXEL_CLASSES
    provides_features = True
    takes_labels = False
    batch_independent = True  # per image: frozen BN, per-image conditioning; False when a fine-tuned part has BN

    def __init__(self, num_classes: int, **options: Any):
        super().__init__()
        opts = _options(options)
        self.options = opts
        self.num_classes = int(num_classes)
        features = create_features_model(opts.backbone, opts.out_indices, opts.backbone_kwargs)
        self._load_weights(features, opts)
        self.encoder = FrozenPrefixBackbone(features, opts.frozen_stages)
        self.batch_independent = not self.encoder.has_trainable_batchnorm()
        channels = self.encoder.channels
        widths = opts.decoder_channels or default_decoder_widths(len(channels))
        if len(widths) != len(channels):
            raise ConfigError(
                f"model.discriminator_options.dp-sims.decoder_channels = {opts.decoder_channels}: backbone "
                f"{opts.backbone!r} gives {len(channels)} feature levels (channels {channels}, strides "
                f"{self.encoder.reductions}), so give {len(channels)} widths, shallow to deep")
        self.widths = widths
        cfg = getattr(features, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", (0.5, 0.5, 0.5)), cfg.get("std", (0.5, 0.5, 0.5))
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

        sn = opts.spectral
        self.conditioners = nn.ModuleList(FeatureConditioner(c, w, opts.feature_conditioning, sn)
                                          for c, w in zip(channels, widths))
        self.bottleneck = ResBlock(widths[-1], widths[-1], sn)
        # ups[i] fuses the state coming from level i+1 into level i
        self.ups = nn.ModuleList(UpBlock(widths[i + 1], widths[i], widths[i], sn) for i in range(len(widths) - 1))
        head = opts.head_channels
        self.stem = maybe_sn(nn.Conv2d(3, head, 3, padding=1), sn) if opts.image_stem else None
        self.up_full = UpBlock(widths[0], head if opts.image_stem else 0, head, sn)
        self.head = nn.Conv2d(head, self.num_classes + 1, 1)

    @staticmethod
    def _load_weights(features: nn.Module, opts: DPSIMSDiscriminatorOptions) -> None:
        if not opts.pretrained:
            if opts.frozen_stages != 0:
                warnings.warn(f"dp-sims: backbone {opts.backbone!r} has random weights (pretrained=false) and "
                              f"frozen_stages={opts.frozen_stages!r}: the frozen part stays a random feature "
                              f"extractor", stacklevel=3)
            return
        if next(features.parameters()).device.type == "meta":  # a structure-only build: nothing to load into
            return
        load_backbone_weights(features, opts.resolved_weights_path(), opts.backbone, owner="dp-sims",
                              option=WEIGHTS_OPTION)

    # ------------------------------------------------------------------------------------------
    def optimizer_param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Decoder (and conditioning) at ``lr``; the fine-tuned backbone parts at ``lr * backbone_lr_scale``; the
        frozen backbone parts in no group (no optimiser state). Used by the trainer
        (:func:`gensynth.train.param_groups.param_groups`)."""
        backbone = {id(p) for p in self.encoder.parameters()}
        decoder = [p for p in self.parameters() if p.requires_grad and id(p) not in backbone]
        groups = [{"params": decoder, "lr": lr}]
        tuned = self.encoder.trainable_parameters()
        if tuned:
            groups.append({"params": tuned, "lr": lr * self.options.backbone_lr_scale})
        return groups

    def normalise(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> the backbone's ImageNet-normalised input."""
        return ((image + 1) * 0.5 - self.pixel_mean.to(image.dtype)) / self.pixel_std.to(image.dtype)

    def forward(self, image: Tensor, cond: Condition | None = None) -> DiscriminatorOutput:
        """image (B, 3, H, W) -> logits (B, N+1, H, W). Gradients reach ``image`` through the frozen backbone when
        it requires them; otherwise the frozen part records no graph (see :mod:`gensynth_dpsims.backbone`)."""
        x = self.normalise(image)
        feats = self.encoder(x)
        conditioned = [c.conditioned(f) for c, f in zip(self.conditioners, feats)]
        projected = [c.proj(f) for c, f in zip(self.conditioners, conditioned)]
        h = self.bottleneck(projected[-1])
        for i in range(len(projected) - 2, -1, -1):
            h = self.ups[i](h, projected[i])
        if self.stem is not None:
            h = self.up_full(h, self.stem(x))
        else:
            h = self.up_full(h, x.new_zeros(x.shape[0], 0, *x.shape[-2:]))
        logits = self.head(F.leaky_relu(h, 0.2))
        return DiscriminatorOutput(self.output_kind, logits, [conditioned])
