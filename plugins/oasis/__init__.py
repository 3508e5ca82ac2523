"""gensynth_oasis: the OASIS plugin of gensynth (generator, U-Net discriminator, N+1 loss, LabelMix, importer).

Python API for notebooks and scripts::

    from gensynth_oasis import load_official_generator
    G = load_official_generator("oasis_ade20k_pretrained", "ade20k")   # official release folder
    image = G(one_hot_labels, z).image                                   # z: (B, 64)
"""
from __future__ import annotations


def load_official_generator(path, dataset, *, ema=True, which=None, device="cpu"):
    """An official OASIS release folder -> gensynth ``oasis`` generator (eval mode); see importer.py."""
    from gensynth_oasis.importer import load_official_generator as _load

    return _load(path, dataset, ema=ema, which=which, device=device)


__all__ = ["load_official_generator"]
