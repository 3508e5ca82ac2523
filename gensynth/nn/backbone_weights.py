"""Loading a timm backbone's pretrained weights from a local file (gensynth never downloads them).

Shared by every plugin that puts a timm backbone inside a model (``timm-unet``, ``dp-sims``). The file holds the
state dict of ``timm.create_model(name, pretrained=True)`` (the classification head is ignored) or of the
``features_only`` model itself. It is read with safetensors or with ``torch.load(weights_only=True)``, so an
untrusted file cannot run code. ``owner`` (the part's name) and ``option`` (the config key of the path) only shape
the error messages.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from gensynth.errors import CheckpointError, MissingWeightsError

_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "encoder.")
_NESTED_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
DEFAULT_OPTION = "model.discriminator_options.weights_path"


def weights_url(backbone: str) -> str | None:
    """Where timm's default pretrained weights of ``backbone`` are published (read from timm's registry, offline):
    the Hugging Face ``model.safetensors`` of its default tag, else the original URL; None when timm knows none."""
    try:
        import timm

        cfg = timm.models.get_pretrained_cfg(backbone)
    except Exception:  # noqa: BLE001 - an unknown name: the caller reports the missing file anyway
        return None
    if cfg is None:
        return None
    if getattr(cfg, "hf_hub_id", None):
        return f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors"
    return getattr(cfg, "url", None) or None


def how_to_obtain(backbone: str, path: str | Path, option: str = DEFAULT_OPTION) -> str:
    """The instructions printed when the weights file is missing: its URL, a one-line way to make it, where it goes."""
    url = weights_url(backbone)
    where = (f"Download {url} (a safetensors state dict of timm.create_model('{backbone}', pretrained=True)) "
             f"and save it as {str(path)!r}.\nOr create it" if url else "Create it")
    return (f"{where} once on a machine with internet access:\n"
            f"  python -c \"import timm, torch; from safetensors.torch import save_file; "
            f"m = timm.create_model('{backbone}', pretrained=True); "
            f"save_file({{k: v.contiguous() for k, v in m.state_dict().items()}}, '{Path(path).name}')\"\n"
            f"then copy it to {str(path)!r} (or point {option} at it).")


def read_state_dict(path: str | Path, backbone: str, owner: str = "timm-unet",
                    option: str = DEFAULT_OPTION) -> dict[str, Tensor]:
    """Read tensors from ``path``: safetensors by extension, else torch.load(weights_only=True)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(
            f"{owner}: pretrained weights for backbone {backbone!r} not found: {str(path)!r} does not exist. "
            + how_to_obtain(backbone, path, option))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign or pickled-code files
        raise CheckpointError(
            f"{owner}: cannot read backbone weights {str(path)!r}: {exc}. Expected a .safetensors file or a "
            f"torch state dict saved with torch.save(model.state_dict(), ...)") from None
    for key in _NESTED_KEYS:  # {'state_dict': {...}} style training checkpoints
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{owner}: {str(path)!r} does not hold a state dict of tensors")
    return state


def _strip_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def _source_key(key: str, source: dict[str, Tensor]) -> str | None:
    """The key in the full model's state dict for a key of the features-only model.

    timm's FeatureListNet flattens top-level Sequential modules (``stages.0`` becomes ``stages_0``),
    so an underscore of the first path component may stand for a dot.
    """
    if key in source:
        return key
    head, _, rest = key.partition(".")
    for i, ch in enumerate(head):
        if ch == "_":
            candidate = f"{head[:i]}.{head[i + 1:]}" + (f".{rest}" if rest else "")
            if candidate in source:
                return candidate
    return None


def load_backbone_weights(encoder: nn.Module, path: str | Path, backbone: str, owner: str = "timm-unet",
                          option: str = DEFAULT_OPTION) -> int:
    """Copy the weights in ``path`` into ``encoder`` (a timm features_only model). Returns tensors loaded.

    Raises MissingWeightsError (file missing, with its URL and where to put it) or CheckpointError naming the file
    and the first missing or mis-shaped keys (a file of another backbone).
    """
    source = _strip_prefixes(read_state_dict(path, backbone, owner, option))
    target = encoder.state_dict()
    mapped: dict[str, Tensor] = {}
    missing, wrong_shape = [], []
    for key, tensor in target.items():
        src = _source_key(key, source)
        if src is None:
            if not key.endswith("num_batches_tracked"):
                missing.append(key)
            continue
        if source[src].shape != tensor.shape:
            wrong_shape.append(f"{key} {tuple(source[src].shape)} != {tuple(tensor.shape)}")
            continue
        mapped[key] = source[src]
    if missing or wrong_shape:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing tensors (e.g. {', '.join(missing[:3])})")
        if wrong_shape:
            problems.append(f"{len(wrong_shape)} with another shape (e.g. {'; '.join(wrong_shape[:3])})")
        raise CheckpointError(
            f"{owner}: {str(path)!r} does not fit backbone {backbone!r}: {' and '.join(problems)}. "
            f"Is it the state dict of timm.create_model({backbone!r})?")
    encoder.load_state_dict(mapped, strict=False)
    return len(mapped)
