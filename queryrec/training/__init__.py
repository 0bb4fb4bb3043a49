"""One training loop for every model: batches, objective, loop, checkpoints, DDP."""
