"""Hook implementations of this plugin (registered through the gensynth entry point)."""
from gensynth import hookimpl  # noqa: F401
