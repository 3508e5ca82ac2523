"""gensynth_timm: built-in gensynth plugin (timm-backbone U-Net discriminator, DP-SIMS style).

Importing the package does not import timm; :mod:`gensynth_timm.plugin` registers ``timm-unet``.
"""
