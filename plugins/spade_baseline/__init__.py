"""gensynth_spade: the SPADE baseline plugin (generator, multi-scale PatchGAN, SPADE losses, presets)."""
