"""Optional packages of the evaluation (the ``eval`` extra) and the message when one is missing."""
from __future__ import annotations

import importlib
from types import ModuleType

from gensynth.errors import ConfigError

EXTRA_HINT = 'pip install "gensynth[eval]"'

#: import name -> PyPI name, for every package the metrics use
PACKAGES = {
    "pytorch_fid": "pytorch-fid",
    "torch_fidelity": "torch-fidelity",
    "torchmetrics": "torchmetrics",
    "pytorch_msssim": "pytorch-msssim",
    "lpips": "lpips",
    "skimage": "scikit-image",
}


def optional_import(module: str, metric: str) -> ModuleType:
    """Import ``module`` (a key of :data:`PACKAGES` or a submodule of one) or raise a ConfigError naming the metric,
    the PyPI package and the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        pkg = PACKAGES.get(top, top)
        raise ConfigError(f"metric {metric!r} needs the Python package {pkg} ({exc}); install the evaluation extra: "
                          f"{EXTRA_HINT}") from None


def missing_package(module: str) -> str | None:
    """The PyPI name of ``module``'s package when it cannot be imported, else None (no import side effects kept)."""
    import importlib.util

    top = module.split(".")[0]
    return None if importlib.util.find_spec(top) is not None else PACKAGES.get(top, top)
