"""The training loop, strategies, checkpoints and training hooks."""
