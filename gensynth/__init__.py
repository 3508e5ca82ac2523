"""gensynth: semantic image synthesis with plugins."""
from gensynth.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
