"""Hook specifications of gensynth.

Every hook receives a ``register`` callable (the llm/datasette pattern) instead of
returning values, so that a plugin may register zero or many things and the core keeps
control of names, duplicates and provenance.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("gensynth")
hookimpl = pluggy.HookimplMarker("gensynth")


@hookspec
def register_generators(register):
    """Register generator factories: ``register(name, factory, options=Schema, description=...)``.

    ``factory(num_classes: int, **options) -> gensynth.interfaces.Generator``.
    """


@hookspec
def register_discriminators(register):
    """Register discriminator factories: ``factory(num_classes, **options) -> Discriminator``."""


@hookspec
def register_objectives(register):
    """Register adversarial objectives (``gensynth.interfaces.Objective`` subclasses)."""


@hookspec
def register_losses(register):
    """Register extra weighted loss terms (``gensynth.interfaces.LossTerm`` subclasses)."""


@hookspec
def register_datasets(register):
    """Register dataset specs (``gensynth.interfaces.DatasetSpec`` instances)."""


@hookspec
def register_models(register):
    """Register named model presets (``gensynth.interfaces.ModelPreset`` instances)."""


@hookspec
def register_segmenters(register):
    """Register segmenter factories used for mIoU evaluation."""


@hookspec
def register_commands(cli):
    """Add click commands or groups to the ``gensynth`` command line (``cli`` is the root group)."""
