"""gensynth_oasis: built-in gensynth plugin."""
