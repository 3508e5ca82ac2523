"""gensynth checkpoints: one directory per checkpoint, written atomically, verified on load.

Layout of a checkpoint directory (``<run_dir>/checkpoints/step_00001000/``)::

    generator.safetensors        generator weights
    generator_ema.safetensors    EMA generator weights (optional)
    discriminator.safetensors    discriminator weights (optional)
    training_state.pt            optimiser/scaler/RNG states, data position (optional; torch.save of plain data)
    meta.json                    {"format", "gensynth_version", "config", "step", "files": {name: sha256}, ...}
    SHA256SUMS                   sha256 of every other file, meta.json included (``sha256sum -c SHA256SUMS`` format)

A checkpoint is written into a temporary sibling directory, every file fsynced, then renamed into
place, so a process killed while saving leaves the previous checkpoints untouched. In a run's
``checkpoints/`` directory the text files ``LATEST`` and ``BEST`` name checkpoint directories and
are replaced atomically. Weights are read with safetensors and the training state with
``torch.load(weights_only=True)``: loading a checkpoint never executes code. Nothing in meta.json is trusted
to start a process either: its configuration is read with ``data.allow_pipe`` off (see
:meth:`Checkpoint.config`). Checkpoints written before SHA256SUMS existed are read with meta.json's own list.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gensynth.fileio import sha256_file
from gensynth.errors import CheckpointError

FORMAT = "gensynth-checkpoint/1"
META = "meta.json"
CHECKSUMS = "SHA256SUMS"
TRAINING_STATE = "training_state.pt"
MODEL_NAMES = ("generator", "generator_ema", "discriminator")
LATEST = "LATEST"
BEST = "BEST"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an older one."""


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def step_dir_name(step: int) -> str:
    """``step_00001000`` for step 1000."""
    return f"step_{int(step):08d}"


def strip_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove DDP / torch.compile wrapper prefixes (``module.``, ``_orig_mod.``) from state-dict keys."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        out[key] = value
    return out


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on this platform (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_checksums(directory: str | Path) -> dict[str, str]:
    """Write ``SHA256SUMS`` covering every file of a checkpoint directory (meta.json included); return it."""
    directory = Path(directory)
    sums = {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != CHECKSUMS}
    with open(directory / CHECKSUMS, "w") as f:
        f.write("".join(f"{digest}  {name}\n" for name, digest in sums.items()))
        f.flush()
        os.fsync(f.fileno())
    return sums


def read_checksums(directory: Path) -> dict[str, str] | None:
    """``{file name: sha256}`` from ``SHA256SUMS``, None when the checkpoint predates it; CheckpointError when
    it cannot be parsed."""
    path = directory / CHECKSUMS
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc})") from None
    sums = {}
    for number, line in enumerate(text.splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or "/" in name or name.startswith("."):
            raise CheckpointError(f"{path} is damaged: line {number} is not '<sha256>  <file name>'")
        sums[name] = digest
    return sums


def _plain_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous, storage-unshared copies (safetensors refuses shared tensors)."""
    out = {}
    for k, v in strip_prefixes(state).items():
        if not isinstance(v, Tensor):
            raise CheckpointError(f"state entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k] = v.detach().to("cpu").contiguous().clone()
    return out


# --------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------
def save_checkpoint(directory: str | Path, *, models: dict[str, dict[str, Tensor]], meta: dict,
                    training_state: dict | None = None) -> Path:
    """Write a checkpoint directory atomically and return its path.

    models: ``{"generator": state_dict, "generator_ema": ..., "discriminator": ...}`` (generator required);
    each is saved as ``<name>.safetensors`` without wrapper prefixes.
    meta: must hold ``"config"`` (``RunConfig.model_dump(mode="json")``) and ``"step"`` (int); this function
    adds ``"format"``, ``"gensynth_version"`` and ``"files"`` ({filename: sha256}).
    training_state: plain data (tensors, numbers, lists, dicts) saved with ``torch.save``.
    An existing checkpoint at ``directory`` is replaced (the old one is removed only after the new one is in place).
    """
    from safetensors.torch import save_file

    from gensynth import __version__

    directory = Path(directory)
    if "generator" not in models:
        raise CheckpointError(f"checkpoint {directory}: models must include 'generator', got {sorted(models)}")
    unknown = set(models) - set(MODEL_NAMES)
    if unknown:
        raise CheckpointError(f"checkpoint {directory}: unknown model names {sorted(unknown)}; allowed: {list(MODEL_NAMES)}")
    for key in ("config", "step"):
        if key not in meta:
            raise CheckpointError(f"checkpoint {directory}: meta must include {key!r}")
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:
        raise CheckpointError(_write_error(directory, exc)) from None
    try:
        files: dict[str, str] = {}
        for name, state in models.items():
            if state is None:
                continue
            fname = f"{name}.safetensors"
            save_file(_plain_state(state), str(tmp / fname), metadata={"format": FORMAT, "model": name})
            _fsync_file(tmp / fname)
            files[fname] = sha256_file(tmp / fname)
        if training_state is not None:
            torch.save(training_state, tmp / TRAINING_STATE)
            _fsync_file(tmp / TRAINING_STATE)
            files[TRAINING_STATE] = sha256_file(tmp / TRAINING_STATE)
        full_meta = {**meta, "step": int(meta["step"]), "format": FORMAT, "gensynth_version": __version__,
                     "files": files}
        with open(tmp / META, "w") as f:
            json.dump(full_meta, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        write_checksums(tmp)
        _fsync_dir(tmp)
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(directory, old)
        os.replace(tmp, directory)
        _fsync_dir(directory.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) or type(exc).__name__ == "SafetensorError":  # disk full, read-only, quota
            raise CheckpointError(_write_error(directory, exc)) from None
        raise
    return directory


def _write_error(directory: Path, exc: BaseException) -> str:
    """One line for a failed checkpoint write: the path and the system's reason (e.g. No space left on device)."""
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        reason = exc.strerror or str(exc)
    else:  # safetensors reports the OS error inside its own message
        where, reason = "", " ".join(str(exc).split())
        for text in ("No space left on device", "Read-only file system", "Disk quota exceeded", "Permission denied"):
            if text in reason:
                reason = f"{text} ({reason})"
                break
    return f"cannot write checkpoint {directory}{where}: {reason}; the previous checkpoints are untouched"


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A verified checkpoint directory. ``meta`` is its meta.json."""

    path: Path
    meta: dict
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))

    def has(self, name: str) -> bool:
        return f"{name}.safetensors" in self.meta.get("files", {})

    def state(self, name: str) -> dict[str, Tensor] | None:
        """The state dict saved as ``<name>.safetensors`` (CPU tensors), or None when absent."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        fname = f"{name}.safetensors"
        if fname not in self.meta.get("files", {}):
            return None
        path = self.path / fname
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {path}: {exc}") from exc

    def training_state(self) -> dict | None:
        """Optimiser/scaler/RNG states and data position, or None when the checkpoint has none."""
        if TRAINING_STATE not in self.meta.get("files", {}):
            return None
        path = self.path / TRAINING_STATE
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling errors come in many types
            raise CheckpointError(f"cannot read {path}: {exc}") from exc

    def config(self):
        """The run configuration (a RunConfig) the checkpoint was trained with.

        ``data.allow_pipe`` is always off: a value read from meta.json never lets a ``pipe:`` root run."""
        from pydantic import ValidationError

        from gensynth.config import RunConfig, format_validation_error

        try:
            doc = copy.deepcopy(self.meta["config"])
            if isinstance(doc, dict) and isinstance(doc.get("data"), dict):
                doc["data"].pop("allow_pipe", None)
            return RunConfig.model_validate(doc)
        except KeyError:
            raise CheckpointError(f"{self.path / META} has no 'config'") from None
        except ValidationError as exc:
            raise CheckpointError(f"{self.path / META}: stored configuration is invalid for this gensynth version: "
                                  f"{format_validation_error(exc)}") from None


    def config_with(self, overrides: dict[str, Any]):
        """The stored configuration with the user's ``overrides`` (dotted keys, given on the command line) applied.

        A ``pipe:`` data.root must come from the overrides together with ``data.allow_pipe=true``; one read from
        meta.json is a ConfigError naming the file and the field."""
        from gensynth.config import build_config, flatten

        stored = flatten(self.config().model_dump(mode="json"))
        cfg, _ = build_config([(str(self.path / META), stored), ("cli", dict(overrides))])
        return cfg


def _read_checkpoint_dir(path: Path, verify: bool) -> Checkpoint:
    """Open one checkpoint directory; raise CheckpointError naming the file when it is damaged."""
    meta_path = path / META
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is incomplete: {META} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path} is damaged (not valid JSON: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{meta_path}: unsupported checkpoint format {got!r}; expected {FORMAT!r}")
    files = meta.get("files")
    if not isinstance(files, dict) or "generator.safetensors" not in files:
        raise CheckpointError(f"{meta_path}: 'files' must list generator.safetensors")
    for fname in files:
        if not isinstance(fname, str) or "/" in fname or "\\" in fname or fname.startswith(".") or fname == META:
            raise CheckpointError(f"{meta_path}: 'files' names {fname!r}, which is not a file of the checkpoint")
    sums = read_checksums(path)
    if sums is None:  # written before SHA256SUMS: meta.json's own list
        sums, listed_in = {k: str(v) for k, v in files.items()}, META
    else:
        listed_in = CHECKSUMS
        on_disk = sorted(p.name for p in path.iterdir() if p.is_file() and p.name != CHECKSUMS)
        unlisted = [n for n in on_disk if n not in sums] + [n for n in files if n not in sums]
        if unlisted:
            raise CheckpointError(f"checkpoint file {path / unlisted[0]} is not covered by {path / CHECKSUMS} "
                                  f"(added or renamed after saving)")
    for fname in sums:
        fpath = path / fname
        if not fpath.is_file():
            raise CheckpointError(f"checkpoint file {fpath} is missing")
        if verify and sha256_file(fpath) != sums[fname]:
            raise CheckpointError(f"checkpoint file {fpath} is damaged: its sha256 does not match {listed_in} "
                                  f"(truncated or modified)")
    for fname in files:
        if not (path / fname).is_file():
            raise CheckpointError(f"checkpoint file {path / fname} is missing")
    return Checkpoint(path=path, meta=meta)


def checkpoint_root(run_dir: str | Path) -> Path:
    """``<run_dir>/checkpoints``."""
    return Path(run_dir) / "checkpoints"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint directories (``step_*``) under a run's ``checkpoints/`` directory, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def read_pointer(root: str | Path, name: str = LATEST) -> Path | None:
    """The checkpoint directory named by ``checkpoints/LATEST`` (or BEST), or None."""
    f = Path(root) / name
    try:
        target = f.read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    if not target or "/" in target or "\\" in target or target.startswith("."):
        return None
    return Path(root) / target


def write_pointer(root: str | Path, name: str, target: str | Path) -> None:
    """Atomically point ``checkpoints/<name>`` (LATEST, BEST) at a checkpoint directory."""
    write_text_atomic(Path(root) / name, Path(target).name + "\n")


def _candidates(root: Path) -> list[Path]:
    """Checkpoint directories to try, best first: the one LATEST names, then the others newest first."""
    ordered = list(reversed(list_checkpoints(root)))
    latest = read_pointer(root, LATEST)
    if latest is not None and latest.is_dir():
        ordered = [latest] + [p for p in ordered if p != latest]
    return ordered


def load_checkpoint(path: str | Path, *, verify: bool = True) -> Checkpoint:
    """Open a checkpoint directory, or the latest good checkpoint of a run directory.

    path: a checkpoint directory (holding meta.json), a run's ``checkpoints/`` directory, a run
    directory, or a file inside a checkpoint directory. For a run, the checkpoint named by LATEST is
    used; when it is damaged (checksum mismatch, truncated or missing file, missing meta) the previous
    good one is used with a :class:`CheckpointWarning`. Raises CheckpointError naming the path when
    nothing usable is found.
    """
    path = Path(path)
    if path.is_file() and path.parent.joinpath(META).exists():
        path = path.parent
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_file():
        hint = (" (an official OASIS .pth? convert its release folder with `gensynth models import-official oasis "
                "FOLDER --data DATASET --out DIR`)" if path.suffix in (".pth", ".pt", ".ckpt") else "")
        raise CheckpointError(f"{path} is a file, not a gensynth checkpoint: give a run directory or a checkpoint "
                              f"directory holding {META}{hint}")
    if (path / META).exists() or _STEP_DIR.match(path.name):
        return _read_checkpoint_dir(path, verify)
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    candidates = _candidates(root)
    if not candidates:
        raise CheckpointError(f"no checkpoint found in {path} (expected {root}/step_*/ directories with {META})")
    errors = []
    for cand in candidates:
        try:
            ckpt = _read_checkpoint_dir(cand, verify)
        except CheckpointError as exc:
            errors.append(str(exc))
            continue
        if errors:
            warnings.warn(f"skipped damaged checkpoint(s): {'; '.join(errors)}; using {cand}", CheckpointWarning,
                          stacklevel=2)
        return ckpt
    raise CheckpointError(f"no usable checkpoint in {root}: " + "; ".join(errors))


def prune_checkpoints(root: str | Path, keep_last: int, protect: list[Path | None] = ()) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (never those in ``protect``, e.g. BEST).

    Returns the deleted directories. Leftover temporary directories of interrupted saves are removed too.
    """
    root = Path(root)
    keep = {Path(p).resolve() for p in protect if p is not None}
    all_ckpts = list_checkpoints(root)
    doomed = all_ckpts[:-keep_last] if keep_last > 0 else all_ckpts
    deleted = []
    for p in doomed:
        if p.resolve() in keep:
            continue
        shutil.rmtree(p, ignore_errors=True)
        deleted.append(p)
    remove_interrupted_writes(root)
    return deleted


def remove_interrupted_writes(root: str | Path) -> list[Path]:
    """Remove what interrupted saves left in a run's ``checkpoints/``: ``.step_*.tmp-*`` / ``.old-*`` directories and
    ``.LATEST.tmp-*`` / ``.BEST.tmp-*`` files. Only call it while holding the run (no save in progress)."""
    root = Path(root)
    removed = []
    for p in root.iterdir() if root.is_dir() else []:
        if p.is_dir() and p.name.startswith(".step_") and (".tmp-" in p.name or ".old-" in p.name):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        elif p.is_file() and p.name.startswith((f".{LATEST}.tmp-", f".{BEST}.tmp-")):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def tree_to_meta(value: Any) -> Any:
    """Make a value JSON-serialisable for meta.json (paths and tuples to str/list)."""
    if isinstance(value, dict):
        return {str(k): tree_to_meta(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [tree_to_meta(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
