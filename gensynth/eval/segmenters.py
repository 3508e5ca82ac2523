"""Segmenters for mIoU, registered through the ``register_segmenters`` hook.

A segmenter factory is called as ``factory(num_classes=N, checkpoint=RUN_OR_NONE, device=DEVICE, **options)`` and
returns a :class:`gensynth.interfaces.Segmenter`: image (B, 3, H, W) in [-1, 1] -> logits (B, C, H, W).
``output_space`` says whether the C channels are the model classes ("model") or the dataset's evaluation ids
("eval", e.g. Cityscapes' 19 trainIds); ``input_size`` records the resolution it segments at.

Built-ins (core plugin): ``oasis-discriminator`` (the N+1 discriminator of a run, fake channel dropped),
``torchscript`` (any TorchScript file), ``gensynth-segmenter`` (a small net trained by ``gensynth segmenter train``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from gensynth.errors import CheckpointError, ConfigError, IncompatibleError
from gensynth.interfaces import DOutputKind, Segmenter


def _resize_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    return logits if tuple(logits.shape[-2:]) == tuple(size) else F.interpolate(logits, size=size, mode="bilinear",
                                                                                 align_corners=False)


# ---------------------------------------------------------------------------------------------
# the OASIS discriminator as a segmenter
# ---------------------------------------------------------------------------------------------
class DiscriminatorSegmenter(Segmenter):
    """An N+1 discriminator (channel 0 = fake) used as an N-class segmenter: logits[:, 1:]."""

    output_space = "model"

    def __init__(self, discriminator: nn.Module, num_classes: int, dontcare_last: bool = False):
        super().__init__()
        kind = getattr(discriminator, "output_kind", None)
        if kind != DOutputKind.PIXEL_CLASSES:
            raise IncompatibleError(f"segmenter 'oasis-discriminator' needs a discriminator with per-pixel N+1 class "
                                    f"outputs ({DOutputKind.PIXEL_CLASSES.value}); this run's discriminator "
                                    f"{type(discriminator).__name__} outputs {getattr(kind, 'value', kind)!r}")
        self.discriminator = discriminator
        self.num_classes = num_classes
        self.dontcare_last = dontcare_last
        self.input_size = None

    def forward(self, image: Tensor) -> Tensor:
        return self.discriminator(image).logits[:, 1:]


class DiscriminatorSegmenterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: Optional[str] = Field(None, description="run/checkpoint whose discriminator to use (default: the evaluated run)")


def build_discriminator_segmenter(num_classes: int, checkpoint=None, device="cpu", run: str | None = None,
                                  discriminator: nn.Module | None = None) -> DiscriminatorSegmenter:
    """From a loaded ``discriminator`` or from the checkpoint of ``run`` (default: the evaluated checkpoint)."""
    if discriminator is None:
        path = run or checkpoint
        if path is None:
            raise ConfigError("segmenter 'oasis-discriminator' needs a run: pass --checkpoint or "
                              "eval.segmenter_options.run=PATH")
        from gensynth.api import load_model

        m = load_model(path, device=device, with_discriminator=True)
        discriminator = m.discriminator
        if m.parts.num_classes != num_classes:
            raise IncompatibleError(f"the discriminator of {path} segments {m.parts.num_classes} classes, the "
                                    f"evaluated model has {num_classes}")
    return DiscriminatorSegmenter(discriminator.eval(), num_classes).to(device)


# ---------------------------------------------------------------------------------------------
# TorchScript files (DRN-D-105, UperNet, DeepLab-v2 ... exported by the user)
# ---------------------------------------------------------------------------------------------
class TorchScriptOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(..., description="TorchScript file: image tensor -> logits (B, C, h, w) or a tuple/dict of them")
    outputs: Literal["model", "eval"] = Field("eval", description="logit channels: model classes or evaluation ids")
    input_size: Optional[tuple[int, int]] = Field(None, description="(H, W) the segmenter runs at (default: as given)")
    normalize: Literal["minus1-1", "0-1", "imagenet"] = Field("imagenet", description="input value convention")


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class TorchScriptSegmenter(Segmenter):
    """Wraps a TorchScript module; resizes inputs to ``input_size`` and logits back to the input size."""

    def __init__(self, module, num_classes: int, opts: TorchScriptOptions):
        super().__init__()
        self.module = module
        self.num_classes = num_classes
        self.output_space = opts.outputs
        self.input_size = opts.input_size
        self.normalize = opts.normalize
        self.path = opts.path

    def forward(self, image: Tensor) -> Tensor:
        size = image.shape[-2:]
        x = image
        if self.input_size:
            x = F.interpolate(x, size=tuple(self.input_size), mode="bilinear", align_corners=False)
        if self.normalize != "minus1-1":
            x = (x + 1) / 2
            if self.normalize == "imagenet":
                mean = torch.tensor(_IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
                std = torch.tensor(_IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
                x = (x - mean) / std
        out = self.module(x)
        if isinstance(out, dict):
            out = out.get("out", next(iter(out.values())))
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.dim() != 4:
            raise CheckpointError(f"TorchScript segmenter {self.path} returned shape {tuple(out.shape)}; "
                                  f"expected logits (B, C, H, W)")
        return _resize_logits(out, size)


def build_torchscript_segmenter(num_classes: int, checkpoint=None, device="cpu", **options) -> TorchScriptSegmenter:
    opts = TorchScriptOptions.model_validate(options)
    p = Path(opts.path)
    if not p.is_file():
        raise CheckpointError(f"TorchScript segmenter file {p} does not exist (eval.segmenter_options.path)")
    try:
        module = torch.jit.load(str(p), map_location=device)
    except Exception as exc:
        raise CheckpointError(f"{p} is not a TorchScript file: {exc}") from exc
    return TorchScriptSegmenter(module.eval(), num_classes, opts)


# ---------------------------------------------------------------------------------------------
# gensynth's own small segmenter
# ---------------------------------------------------------------------------------------------
class _Block(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.net(x)


class SmallSegNet(Segmenter):
    """A small U-Net segmenter: (B, 3, H, W) in [-1, 1] -> (B, C, H, W) logits over the model classes.

    ``width`` base channels, ``depth`` down/up levels (H and W must be multiples of 2**depth; others are padded).
    """

    output_space = "model"

    def __init__(self, num_classes: int, width: int = 32, depth: int = 3):
        super().__init__()
        self.num_classes, self.width, self.depth = num_classes, width, depth
        self.input_size = None
        chans = [width * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([_Block(3, chans[0])] + [_Block(chans[i], chans[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList(_Block(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], num_classes, 1)

    def forward(self, image: Tensor) -> Tensor:
        h, w = image.shape[-2:]
        f = 2 ** self.depth
        ph, pw = (-h) % f, (-w) % f
        x = F.pad(image, (0, pw, 0, ph), mode="replicate") if ph or pw else image
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.head(x)[..., :h, :w]


SEGMENTER_FORMAT = "gensynth-segmenter/1"


def save_small_segmenter(net: SmallSegNet, path: str | Path, meta: dict) -> Path:
    """Write ``<path>`` (a directory): ``segmenter.safetensors`` + ``segmenter.json``."""
    from safetensors.torch import save_file

    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(d / "segmenter.safetensors"))
    doc = {"format": SEGMENTER_FORMAT, "num_classes": net.num_classes, "width": net.width, "depth": net.depth, **meta}
    (d / "segmenter.json").write_text(json.dumps(doc, indent=2))
    return d


class SmallSegmenterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(..., description="directory written by `gensynth segmenter train`")


def build_small_segmenter(num_classes: int, checkpoint=None, device="cpu", **options) -> SmallSegNet:
    opts = SmallSegmenterOptions.model_validate(options)
    from safetensors.torch import load_file

    d = Path(opts.path)
    meta_path, weights = d / "segmenter.json", d / "segmenter.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise CheckpointError(f"{d} is not a gensynth segmenter (needs segmenter.json and segmenter.safetensors; "
                              f"create one with `gensynth segmenter train`)")
    try:
        meta = json.loads(meta_path.read_text())
        state = load_file(str(weights))
    except Exception as exc:
        raise CheckpointError(f"cannot read segmenter {d}: {exc}") from exc
    if meta.get("format") != SEGMENTER_FORMAT:
        raise CheckpointError(f"{meta_path} has format {meta.get('format')!r}, expected {SEGMENTER_FORMAT!r}")
    if int(meta["num_classes"]) != num_classes:
        raise IncompatibleError(f"segmenter {d} was trained for {meta['num_classes']} classes "
                                f"(dataset {meta.get('dataset')!r}); the evaluated model has {num_classes}")
    net = SmallSegNet(num_classes, int(meta["width"]), int(meta["depth"]))
    net.load_state_dict(state)
    net.input_size = tuple(meta["size"]) if meta.get("size") else None
    return net.eval().to(device)


# ---------------------------------------------------------------------------------------------
def build_segmenter(name: str, *, num_classes: int, checkpoint=None, device="cpu", host=None, **options) -> Segmenter:
    """Look up ``name`` in the segmenter registry and build it (eval mode, on ``device``).

    ``options``: ``eval.segmenter_options``, flat or per segmenter (``{name: {...}}``, only ``name``'s apply);
    validated against the segmenter's options (unknown keys are an error naming it)."""
    from gensynth.options import select_part_options, validate_part_options
    from gensynth.plugins import get_host

    registry = (host or get_host()).registry("segmenters")
    entry = registry.entry(name)
    options = validate_part_options(entry, select_part_options(options, name, registry.names()), "segmenter")
    seg = entry.obj(num_classes=num_classes, checkpoint=checkpoint, device=device, **options)
    return seg.eval()


def register_core_segmenters(register) -> None:
    register("oasis-discriminator", build_discriminator_segmenter, options=DiscriminatorSegmenterOptions,
             description="the N+1 discriminator of a run (fake channel dropped)")
    register("torchscript", build_torchscript_segmenter, options=TorchScriptOptions,
             description="any TorchScript segmentation model (DRN-D-105, UperNet, DeepLab-v2 exported by you)")
    register("gensynth-segmenter", build_small_segmenter, options=SmallSegmenterOptions,
             description="small U-Net trained on the real data by `gensynth segmenter train`")
