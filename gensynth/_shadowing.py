"""Detect a folder named ``gensynth`` that shadows the installed package.

A clone of gensynth's repository is itself a folder named ``gensynth``. Python started in the folder that holds
it (``python -c``, ``python -m gensynth``, ``torchrun -m gensynth``, a notebook) puts the current folder first
on ``sys.path``; the clone, having no ``__init__.py``, becomes a namespace package ``gensynth``, which wins over an
editable install (its finder comes after Python's own). The modules the editable finder still supplies then fail
with puzzling errors ("cannot import name 'PluginHost' from 'gensynth.plugins'"). This module turns that into one
error that says what happened and what to do.
"""
from __future__ import annotations

import sys
from pathlib import Path


class ShadowedPackageError(ImportError):
    pass


def check() -> None:
    """ShadowedPackageError when the imported ``gensynth`` is a namespace package not made of this file's folder."""
    pkg = sys.modules.get("gensynth")
    if pkg is None or getattr(pkg, "__file__", None) is not None:
        return
    here = str(Path(__file__).resolve().parent)
    paths = [str(p) for p in getattr(pkg, "__path__", [])]
    if here in (str(Path(p).resolve()) for p in paths):
        return
    where = paths[0] if paths else "a folder named gensynth"
    raise ShadowedPackageError(
        f"the folder {where} (a clone of gensynth's repository?) shadows the installed gensynth package "
        f"({here}): Python imports it because it is run from {Path(where).parent}. Run from another folder (e.g. "
        f"cd into the clone), or use the gensynth command (torchrun --no-python gensynth train ... instead of "
        f"torchrun -m gensynth train ...)")
