"""gensynth_datasets: built-in gensynth plugin."""
