"""The long-running learnd process: sockets, trainer, predictor, control, metrics, state."""
