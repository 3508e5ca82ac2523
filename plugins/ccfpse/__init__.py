"""gensynth_ccfpse: the CC-FPSE plugin (conditional-convolution generator, FPSE discriminator, presets, importer)."""
