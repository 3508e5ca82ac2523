"""Building blocks shared by model plugins (SPADE normalisation, spectral norm, VGG features)."""
