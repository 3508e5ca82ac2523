"""Exceptions with messages meant for users."""
from __future__ import annotations

import difflib

from gensynth._shadowing import check as _check_not_shadowed

_check_not_shadowed()  # a folder named gensynth in the current directory: one clear error, not a puzzling one


class GensynthError(Exception):
    """Base class for errors gensynth reports to its users (no traceback in the CLI)."""


class RegistryError(GensynthError, KeyError):
    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(GensynthError, ValueError):
    """A configuration value is invalid; the message names the field, value and what is allowed."""


class IncompatibleError(ConfigError):
    """Components that cannot work together (e.g. LabelMix with a patch discriminator)."""


class DataError(GensynthError, ValueError):
    """Bad input data; the message names the file and the problem."""


class CheckpointError(GensynthError, ValueError):
    """A checkpoint is missing, damaged or belongs to another model."""


class MissingWeightsError(GensynthError, FileNotFoundError):
    """Pretrained weights that gensynth cannot download were not found locally."""


def suggest(name: str, choices) -> str:
    """``" Did you mean 'x'?"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""
