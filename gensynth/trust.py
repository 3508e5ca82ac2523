"""Values that run a command or load a program, and where gensynth accepts them from.

``pipe:CMD`` data roots start a shell; a TorchScript segmenter (``eval.segmenter=torchscript``) loads a
program. Both are accepted only from the user's own command line or YAML.

A ``pipe:`` data root starts a shell. gensynth runs one only when the user typed it themselves, on the
command line or in their own YAML (``--config``), AND opted in with ``data.allow_pipe=true`` there too.
Values read from a checkpoint's meta.json, a dataset card, a preset or any other file someone else
wrote never start a process: the opener refuses ``pipe:`` unless its caller passes ``allow_pipe``, and
configurations read from checkpoints have ``data.allow_pipe`` switched off.
"""
from __future__ import annotations

from gensynth.errors import ConfigError

COMMAND_PREFIXES = ("pipe:",)


def runs_command(url: str | None) -> bool:
    """True when ``url`` (or any URL its brace pattern expands to) would start a process."""
    if not url:
        return False
    url = str(url).strip()
    if url.startswith(COMMAND_PREFIXES):
        return True
    if "{" in url:
        from braceexpand import braceexpand

        try:
            return any(u.strip().startswith(COMMAND_PREFIXES) for u in braceexpand(url))
        except Exception:  # an unbalanced pattern: be conservative
            return any(p in url for p in COMMAND_PREFIXES)
    return False


def typed_by_user(source: str | None) -> bool:
    """Provenance labels of values the user gave in this invocation: ``cli`` and ``yaml <path>``."""
    return source == "cli" or (source or "").startswith("yaml ")


def refusal(url: str, where: str | None = None) -> str:
    """The one-line message for a command URL that is not allowed."""
    origin = f" (from {where})" if where else ""
    return (f"data.root {url!r}{origin} would run a shell command; gensynth runs pipe: URLs only when you give them "
            f"yourself on the command line or in your own YAML together with data.allow_pipe=true")


def check_command_sources(cfg, provenance: dict[str, str]) -> None:
    """ConfigError unless a command in ``data.root`` and ``data.allow_pipe=true`` both come from the user, and a
    TorchScript segmenter file was named by the user.

    cfg: a RunConfig; provenance: dotted key -> source label (see gensynth.config.build_config)."""
    if cfg.eval.segmenter == "torchscript" and cfg.eval.segmenter_options.get("path") is not None:
        src = provenance.get("eval.segmenter_options.path")
        if not typed_by_user(src):
            raise ConfigError(f"eval.segmenter_options.path {cfg.eval.segmenter_options['path']!r} (from {src}) names "
                              f"a TorchScript program; gensynth loads one only when you name it yourself "
                              f"(--set eval.segmenter_options.path=FILE)")
    root = cfg.data.root
    allow_src = provenance.get("data.allow_pipe")
    if cfg.data.allow_pipe and not typed_by_user(allow_src):
        raise ConfigError(f"data.allow_pipe=true comes from {allow_src}; it is honoured only on the command line "
                          f"or in your own YAML")
    if not runs_command(root):
        return
    root_src = provenance.get("data.root")
    if not typed_by_user(root_src):
        raise ConfigError(refusal(root, root_src))
    if not cfg.data.allow_pipe:
        raise ConfigError(f"data.root {root!r} (from {root_src}) would run a shell command: add data.allow_pipe=true "
                          f"(--set data.allow_pipe=true or in your YAML) if you mean it")
