"""Training: the trainer, its members' re-batching, evaluation, diagnosis, early stopping and checkpoints."""
