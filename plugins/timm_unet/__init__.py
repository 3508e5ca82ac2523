"""gensynth_timm: built-in gensynth plugin (timm-backbone U-Net discriminator, DP-SIMS style)."""
