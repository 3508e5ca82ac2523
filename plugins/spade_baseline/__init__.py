"""gensynth_spade: built-in gensynth plugin."""
