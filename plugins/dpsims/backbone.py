"""The discriminator's timm backbone: creation, (partial) freezing, and a forward that skips autograd where exact.

``FrozenPrefixBackbone`` wraps a timm ``features_only`` model. The modules up to feature level ``k - 1``
(``frozen_stages = k``; "all" = every module) are fixed: no gradients, eval mode (fixed BatchNorm statistics),
never handed to an optimiser. When the input image does not require gradients (the real images, and the fakes of
the D step, which are detached) the fixed prefix runs under ``torch.no_grad()``: no graph is recorded because none
could be used, so the result and every gradient are exactly those of the plain forward. When the image requires
gradients (the fakes of the G step) autograd runs through the whole backbone so that G learns through it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from gensynth.errors import ConfigError


def create_features_model(backbone: str, out_indices: list[int] | None, extra: dict) -> nn.Module:
    """``timm.create_model(backbone, features_only=True, pretrained=False)``; ConfigError naming the backbone."""
    import timm

    kwargs = dict(extra)
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    try:
        return timm.create_model(backbone, features_only=True, pretrained=False, **kwargs)
    except Exception as exc:
        raise ConfigError(f"dp-sims: cannot create backbone {backbone!r} with features_only=True "
                          f"(model.discriminator_options.dp-sims: backbone, out_indices, backbone_kwargs): "
                          f"{exc}") from None


class FrozenPrefixBackbone(nn.Module):
    """image (B, 3, H, W), already normalised -> list of L feature maps (B, C_l, H / s_l, W / s_l).

    ``frozen_stages``: "all", or the number k of feature levels whose modules (and every module before them) are
    fixed. Partial freezing needs a timm FeatureListNet (ConvNeXt, ResNet ...): a sequence of modules with taps;
    other feature wrappers can only be frozen whole or not at all.
    """

    def __init__(self, features: nn.Module, frozen_stages: int | str = "all"):
        super().__init__()
        self.features = features
        info = features.feature_info
        self.channels = list(info.channels())
        self.reductions = list(info.reduction())
        levels = len(self.channels)
        k = levels if frozen_stages == "all" else int(frozen_stages)
        if k > levels:
            raise ConfigError(f"model.discriminator_options.dp-sims.frozen_stages = {frozen_stages}: the backbone "
                              f"has {levels} feature levels; use 0..{levels} or 'all'")
        self.sequential = hasattr(features, "return_layers") and hasattr(features, "items")
        if not self.sequential and 0 < k < levels:
            raise ConfigError(f"model.discriminator_options.dp-sims.frozen_stages = {frozen_stages}: backbone "
                              f"{type(features).__name__} is not a sequence of stages; freeze 'all' or 0 levels")
        self.frozen_levels = k
        self.frozen_modules: list[nn.Module] = []  # plain list: not registered twice
        if self.sequential:
            taps = {name: int(idx) for name, idx in features.return_layers.items()}
            order = list(features.items())
            self.num_frozen_modules = 0
            if k == levels:
                self.num_frozen_modules = len(order)
            elif k > 0:
                last = next(i for i, (name, _) in enumerate(order) if taps.get(name) == k - 1)
                self.num_frozen_modules = last + 1
            self.frozen_modules = [m for _, m in order[:self.num_frozen_modules]]
        elif k == levels:
            self.frozen_modules = [features]
        for m in self.frozen_modules:
            m.requires_grad_(False)
        self._set_modes()

    @property
    def fully_frozen(self) -> bool:
        return all(not p.requires_grad for p in self.features.parameters())

    def frozen_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.frozen_modules for p in m.parameters()]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.features.parameters() if p.requires_grad]

    def has_trainable_batchnorm(self) -> bool:
        """True when a fine-tuned part normalises with batch statistics (outputs then depend on the batch)."""
        frozen = {id(m) for f in self.frozen_modules for m in f.modules()}
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in frozen
                   for m in self.features.modules())

    def _set_modes(self) -> None:
        for m in self.frozen_modules:
            m.eval()

    def train(self, mode: bool = True) -> "FrozenPrefixBackbone":
        """As nn.Module.train, but the fixed modules stay in eval mode."""
        super().train(mode)
        self._set_modes()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        skip_graph = not x.requires_grad and torch.is_grad_enabled()
        if not self.sequential:
            if skip_graph and self.fully_frozen:
                with torch.no_grad():
                    out = self.features(x)
            else:
                out = self.features(x)
            return list(out.values()) if isinstance(out, dict) else list(out)
        taps = self.features.return_layers
        outs: list[Tensor] = []
        for i, (name, module) in enumerate(self.features.items()):
            if skip_graph and i < self.num_frozen_modules:
                with torch.no_grad():
                    x = module(x)
            else:
                x = module(x)
            if name in taps:
                outs.append(x[0] if isinstance(x, (tuple, list)) else x)
        return outs
