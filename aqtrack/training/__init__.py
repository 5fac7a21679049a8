"""The network and its training loop: model, loop, checkpoints, precision, distributed, interrupts, scores.
Never imports MLflow or aqtrack.tracking."""
