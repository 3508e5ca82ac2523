"""gensynth_dpsims: built-in gensynth plugin, DP-SIMS-style semantic image synthesis (Berrada et al., CVPR 2024).

A discriminator on a frozen pretrained timm backbone (``dp-sims``), a generator whose label-map encoder
modulates an image trunk and takes its noise through cross-attention (``dp-sims``), a focal (N+1) objective
(``focal-n+1``) and two loss terms (``patch-nce``, ``diversity``), with the presets ``dp-sims``,
``dp-sims-small`` and ``dp-sims-demo``. Every choice the paper's public text does not state is an option with a
documented default (README.md). Importing the package imports nothing heavy; :mod:`gensynth_dpsims.plugin`
registers the parts.
"""
