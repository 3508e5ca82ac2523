"""The trainer: one loop for every model, single process or DDP (torchrun)."""
