"""VGG19 perceptual loss (pix2pixHD / SPADE), with weights read from a local file only.

The network is torchvision's ``vgg19().features`` layout (same module indices, so torchvision's state dict
``vgg19-dcbb9e9d.pth`` loads as is), cut into five slices ending at relu1_1, relu2_1, relu3_1, relu4_1 and
relu5_1 (feature indices 2, 7, 12, 21, 30). The loss is sum_i w_i * L1(f_i(x), f_i(y).detach()) with
w = 1/32, 1/16, 1/8, 1/4, 1.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensynth.errors import CheckpointError, MissingWeightsError

VGG19_FILENAME = "vgg19-dcbb9e9d.pth"
SLICE_ENDS = (2, 7, 12, 21, 30)
LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)
# torchvision's configuration "E" (VGG19): conv widths, "M" = 2x2 max pool
_VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_features() -> nn.Sequential:
    """torchvision's VGG19 ``features`` (37 modules: conv3x3+ReLU, max pools), randomly initialised."""
    layers: list[nn.Module] = []
    fin = 3
    for v in _VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(fin, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            fin = v
    return nn.Sequential(*layers)


def default_weights_path() -> Path:
    """Where torchvision would cache the file: ``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILENAME


def _missing_message(path: Path | None, explicit: bool) -> str:
    where = f"'{path}'" if path is not None else "(no path configured)"
    head = (f"VGG19 weights for the perceptual ('vgg') loss not found: {where}. " if explicit else
            f"VGG19 weights for the perceptual ('vgg') loss not found: no weights_path was configured and the "
            f"default location '{path}' has no file. ")
    return (head +
            f"gensynth cannot download them. Put torchvision's vgg19 ImageNet state dict ({VGG19_FILENAME}) at "
            f"'{default_weights_path()}' or anywhere and set model.loss_options.vgg.weights_path=PATH. To obtain it, "
            f"on a machine with internet run: python -c \"import torch, torchvision; "
            f"torch.save(torchvision.models.vgg19(weights='IMAGENET1K_V1').state_dict(), '{VGG19_FILENAME}')\". "
            f"Or disable the loss with --loss vgg=0 (model.losses.vgg=0).")


def load_vgg19_state(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read the ``features.*`` tensors of a torchvision vgg19 state dict (torch.load weights_only=True,
    or a .safetensors file). Keys are returned without the ``features.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(_missing_message(path, explicit=True))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable, truncated, or not a plain tensor dict
        raise CheckpointError(f"cannot read VGG19 weights '{path}': {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"VGG19 weights '{path}' hold a {type(state).__name__}, expected torchvision's "
                              f"vgg19 state dict (keys features.0.weight ...)")
    return {k[len("features."):]: v for k, v in state.items() if isinstance(k, str) and k.startswith("features.")}


class VGG19Slices(nn.Module):
    """Frozen VGG19 feature extractor: image (B, 3, H, W) -> 5 maps (relu1_1 ... relu5_1).

    weights_path: torchvision vgg19 state dict; None: the torch hub cache location.
    random_init: build with random weights and no file (tests only).
    normalize_input: map [-1, 1] images to ImageNet statistics first (SPADE and OASIS do not: False).
    """

    def __init__(self, weights_path: str | os.PathLike | None = None, *, random_init: bool = False,
                 normalize_input: bool = False):
        super().__init__()
        features = vgg19_features()
        if not random_init:
            explicit = weights_path is not None
            path = Path(weights_path) if explicit else default_weights_path()
            if not path.is_file():
                raise MissingWeightsError(_missing_message(path, explicit))
            self._load(features, path)
        bounds = (0,) + SLICE_ENDS
        self.slices = nn.ModuleList(nn.Sequential(*[features[i] for i in range(a, b)])
                                    for a, b in zip(bounds[:-1], bounds[1:]))
        self.normalize_input = normalize_input
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    @staticmethod
    def _load(features: nn.Sequential, path: Path) -> None:
        state = load_vgg19_state(path)
        wanted = {k: v for k, v in features.state_dict().items() if int(k.split(".")[0]) < SLICE_ENDS[-1]}
        missing = sorted(set(wanted) - set(state))
        if missing:
            raise CheckpointError(f"VGG19 weights '{path}' lack features.{missing[0]} (and {len(missing) - 1} more): "
                                  f"expected torchvision's vgg19 state dict ({VGG19_FILENAME})")
        for k, v in wanted.items():
            if tuple(state[k].shape) != tuple(v.shape):
                raise CheckpointError(f"VGG19 weights '{path}': features.{k} has shape {tuple(state[k].shape)}, "
                                      f"expected {tuple(v.shape)} (is this vgg19, not vgg16?)")
        features.load_state_dict({k: state[k] for k in wanted}, strict=False)

    def train(self, mode: bool = True) -> "VGG19Slices":  # always frozen, in eval mode
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: (B, 3, H, W) in [-1, 1] -> [relu1_1, relu2_1, relu3_1, relu4_1, relu5_1] maps."""
        if self.normalize_input:
            x = ((x + 1) / 2 - self.mean) / self.std
        out = []
        for s in self.slices:
            x = s(x)
            out.append(x)
        return out


class VGGLoss(nn.Module):
    """Perceptual loss: sum_i w_i * mean |f_i(x) - f_i(y).detach()| (scalar). x, y: (B, 3, H, W)."""

    def __init__(self, weights_path: str | os.PathLike | None = None, *, random_init: bool = False,
                 normalize_input: bool = False, layer_weights: tuple[float, ...] = LAYER_WEIGHTS):
        super().__init__()
        self.vgg = VGG19Slices(weights_path, random_init=random_init, normalize_input=normalize_input)
        if len(layer_weights) != len(SLICE_ENDS):
            raise ValueError(f"layer_weights needs {len(SLICE_ENDS)} values, got {len(layer_weights)}")
        self.layer_weights = tuple(float(w) for w in layer_weights)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        fx, fy = self.vgg(x), self.vgg(y)
        loss = x.new_zeros(())
        for w, a, b in zip(self.layer_weights, fx, fy):
            loss = loss + w * F.l1_loss(a, b.detach())
        return loss
